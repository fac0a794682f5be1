//! Serving gRPC clients that send a Unix socket's path as `:authority`.
//!
//! gRPC-core clients (Python `grpcio`, C++, Ruby, ...) and some others (grpc-java over Netty, older grpcurl)
//! connected to `unix:/path/ipamd.sock` send the percent-encoded path as the HTTP/2 `:authority`, for example
//! `%2Fvar%2Frun%2Faws-node%2Fipamd.sock`. That is no valid authority, and the HTTP/2 server under tonic
//! (hyperium/h2) answers every such request with `RST_STREAM(PROTOCOL_ERROR)`; it has no option to relax the
//! check. Go clients send `localhost` and work.
//!
//! [`NormalizeAuthority`] wraps each accepted connection and rewrites, in the bytes the client sends, an invalid
//! `:authority` value into a valid one of the same length: every byte other than `A-Z a-z 0-9 . -` becomes `-`.
//! Same length matters: HPACK's dynamic table accounts entries by their length, so the client's encoder and the
//! server's decoder keep agreeing on every later indexed reference to the (rewritten) entry. The authority means
//! nothing to a Unix-socket server, so nothing is lost.
//!
//! What is rewritten: a literal header field (any indexing mode) whose name is the static table's `:authority`
//! (index 1) or the literal, non-Huffman name `:authority`, with a non-Huffman value, in a HEADERS frame that
//! carries its whole header block (END_HEADERS). That is how gRPC-core encodes it. A Huffman-coded value
//! cannot keep its length once rewritten and passes unchanged, as does everything the parser does not understand:
//! the filter only ever edits bytes inside a value it has fully parsed, and otherwise forwards bytes as they
//! came, so h2 still sees (and rejects) anything malformed.
//!
//! Memory: only HEADERS frames up to [`MAX_BUFFERED_FRAME`] are held until complete; every other frame's payload
//! streams through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;
/// Frame header length.
const FRAME_HEADER_LEN: usize = 9;
/// Largest HEADERS frame held to be rewritten (h2's default SETTINGS_MAX_FRAME_SIZE is 16 KiB).
pub const MAX_BUFFERED_FRAME: usize = 64 * 1024;

const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A connection whose client-sent `:authority` values are made valid (see the module docs).
#[derive(Debug)]
pub struct NormalizeAuthority<S> {
    inner: S,
    /// Preface bytes still to pass through.
    preface_left: usize,
    /// Payload bytes of the current (not buffered) frame still to pass through.
    passthrough_left: usize,
    /// Bytes read but not yet processed.
    input: Vec<u8>,
    /// Processed bytes not yet handed to the reader.
    output: Vec<u8>,
    output_pos: usize,
    eof: bool,
}

impl<S> NormalizeAuthority<S> {
    pub fn new(inner: S) -> NormalizeAuthority<S> {
        NormalizeAuthority {
            inner,
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) {
        loop {
            if self.preface_left > 0 {
                let n = self.preface_left.min(self.input.len());
                if n == 0 {
                    return;
                }
                self.output.extend(self.input.drain(..n));
                self.preface_left -= n;
                continue;
            }
            if self.passthrough_left > 0 {
                let n = self.passthrough_left.min(self.input.len());
                if n == 0 {
                    return;
                }
                self.output.extend(self.input.drain(..n));
                self.passthrough_left -= n;
                continue;
            }
            if self.input.len() < FRAME_HEADER_LEN {
                return;
            }
            let len = (usize::from(self.input[0]) << 16)
                | (usize::from(self.input[1]) << 8)
                | usize::from(self.input[2]);
            let kind = self.input[3];
            if kind == FRAME_HEADERS && len <= MAX_BUFFERED_FRAME {
                if self.input.len() < FRAME_HEADER_LEN + len {
                    return;
                }
                let mut frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
                rewrite_headers_frame(&mut frame);
                self.output.extend_from_slice(&frame);
            } else {
                self.output.extend(self.input.drain(..FRAME_HEADER_LEN));
                self.passthrough_left = len;
            }
        }
    }
}

/// Rewrites an invalid `:authority` in one complete HEADERS frame (header included), in place.
pub fn rewrite_headers_frame(frame: &mut [u8]) {
    if frame.len() < FRAME_HEADER_LEN {
        return;
    }
    let flags = frame[4];
    if flags & FLAG_END_HEADERS == 0 {
        return;
    }
    let payload = &mut frame[FRAME_HEADER_LEN..];
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let Some(&p) = payload.first() else {
            return;
        };
        pad = usize::from(p);
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    let Some(end) = payload.len().checked_sub(pad) else {
        return;
    };
    if start > end {
        return;
    }
    rewrite_header_block(&mut payload[start..end]);
}

/// Rewrites invalid `:authority` values in an HPACK header block, in place. Stops at the first thing it cannot
/// parse, leaving the rest as it is.
pub fn rewrite_header_block(block: &mut [u8]) {
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        let name_prefix = if b & 0x80 != 0 {
            // Indexed field.
            match integer(block, &mut pos, 7) {
                Some(_) => continue,
                None => return,
            }
        } else if b & 0xC0 == 0x40 {
            6 // literal with incremental indexing
        } else if b & 0xE0 == 0x20 {
            // Dynamic table size update.
            match integer(block, &mut pos, 5) {
                Some(_) => continue,
                None => return,
            }
        } else {
            4 // literal without indexing / never indexed
        };
        let Some(index) = integer(block, &mut pos, name_prefix) else {
            return;
        };
        let is_authority = if index == 0 {
            match string(block, &mut pos) {
                Some((false, range)) => &block[range] == b":authority",
                Some((true, _)) => false,
                None => return,
            }
        } else {
            index == 1
        };
        let Some((huffman, range)) = string(block, &mut pos) else {
            return;
        };
        if is_authority && !huffman {
            normalize_authority(&mut block[range]);
        }
    }
}

/// Makes `value` a valid authority of the same length, if it is not one already.
pub fn normalize_authority(value: &mut [u8]) {
    if value.is_empty() || http::uri::Authority::try_from(&value[..]).is_ok() {
        return;
    }
    for b in value.iter_mut() {
        if !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-') {
            *b = b'-';
        }
    }
}

/// Reads an HPACK integer with an `n`-bit prefix at `*pos`, advancing it.
fn integer(buf: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let mask = (1usize << n) - 1;
    let first = usize::from(*buf.get(*pos)?) & mask;
    *pos += 1;
    if first < mask {
        return Some(first);
    }
    let mut value = mask;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift > 21 {
            return None; // no header block needs an integer this large
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// Reads an HPACK string at `*pos`: whether it is Huffman-coded, and where its bytes are.
fn string(buf: &[u8], pos: &mut usize) -> Option<(bool, std::ops::Range<usize>)> {
    let huffman = *buf.get(*pos)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let start = *pos;
    let end = start.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    *pos = end;
    Some((huffman, start..end))
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalizeAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.output_pos < me.output.len() {
                let n = buf.remaining().min(me.output.len() - me.output_pos);
                buf.put_slice(&me.output[me.output_pos..me.output_pos + n]);
                me.output_pos += n;
                if me.output_pos == me.output.len() {
                    me.output.clear();
                    me.output_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                // Whatever could not be parsed goes through as it came: h2 judges it.
                if me.input.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                me.output.append(&mut me.input);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        me.eof = true;
                    } else {
                        me.input.extend_from_slice(got);
                        me.process();
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalizeAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for NormalizeAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal with incremental indexing and a literal name, as gRPC-core sends `:authority`.
    fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40, name.len() as u8];
        b.extend_from_slice(name);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn a_socket_path_authority_becomes_a_valid_one_of_the_same_length() {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (indexed)
        block.extend(literal(b":authority", b"%2Ftmp%2Fipamd.sock"));
        block.extend(literal(b"te", b"trailers"));
        let before = block.clone();
        rewrite_header_block(&mut block);
        assert_eq!(block.len(), before.len());
        let text = String::from_utf8_lossy(&block);
        assert!(text.contains("-2Ftmp-2Fipamd.sock"), "{text}");
        assert!(text.contains("trailers"));
    }

    #[test]
    fn static_index_name_and_valid_values_and_huffman() {
        // Name by static index 1, literal without indexing.
        let mut block = vec![0x01, 5];
        block.extend_from_slice(b"a/b%c");
        rewrite_header_block(&mut block);
        assert_eq!(&block[2..], b"a-b-c");
        // A valid authority is left alone.
        let mut ok = literal(b":authority", b"localhost:50051");
        let copy = ok.clone();
        rewrite_header_block(&mut ok);
        assert_eq!(ok, copy);
        // A Huffman-coded value is left alone.
        let mut h = vec![0x41, 0x83, b'%', b'/', b'%'];
        let copy = h.clone();
        rewrite_header_block(&mut h);
        assert_eq!(h, copy);
    }

    #[test]
    fn truncated_or_garbage_blocks_never_panic() {
        for block in [
            vec![0x40],
            vec![0x40, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0x01, 0x7f],
            vec![0xff; 40],
        ] {
            let mut b = block.clone();
            rewrite_header_block(&mut b);
        }
    }

    #[tokio::test]
    async fn frames_pass_through_with_the_headers_rewritten() {
        use tokio::io::AsyncReadExt;
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (empty), then HEADERS with END_HEADERS, then DATA.
        wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let block = literal(b":authority", b"tmp%2Fx.sock");
        wire.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x4, 0, 0, 0, 1]);
        wire.extend_from_slice(&block);
        wire.extend_from_slice(&[0, 0, 3, 0, 1, 0, 0, 0, 1, 7, 8, 9]);
        let mut s = NormalizeAuthority::new(&wire[..]);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert_eq!(out.len(), wire.len());
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("tmp-2Fx.sock"), "{text}");
        assert!(out.ends_with(&[7, 8, 9]));
    }
}
