//! Conntrack over netlink (ctnetlink): listing IPv4 flows and deleting the flows of one address.
//!
//! A pod's address goes back to the pool on DEL and may soon belong to another pod. Flows the kernel still tracks
//! for it (a NATed connection of the old pod, a UDP flow kept alive by a client that keeps sending) would carry the
//! old pod's NAT and marks onto the new pod's traffic. So a released address has its flows deleted: every flow
//! with the address as source or destination in either direction.
//!
//! The kernel has no "delete by address" request (a flush only filters by mark), so this dumps the IPv4 table
//! once and deletes each matching flow by its original tuple, echoed back exactly as the kernel sent it (so every
//! protocol's ports, ICMP ids and the zone match without this module decoding them). A dump the kernel flags
//! interrupted (`NLM_F_DUMP_INTR`) is asked again, at most [`crate::netlink::DUMP_ATTEMPTS`] times. A flow gone
//! between the dump and its deletion is not an error.
//!
//! The socket is blocking: callers on an async runtime run these calls on a blocking thread.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::netlink::DUMP_ATTEMPTS;
use crate::NetlinkError;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u8 = 2;
const HEADER: usize = 16;
const NFGENMSG: usize = 4;

/// A conntrack failure.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// Entering the namespace to open the socket failed.
    #[error(transparent)]
    Netns(#[from] NetlinkError),
    /// The netlink socket could not be opened, written or read.
    #[error("conntrack netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused a request.
    #[error("conntrack {op}: {source}")]
    Kernel {
        op: &'static str,
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("conntrack {op}: malformed answer")]
    Malformed { op: &'static str },
    /// Every dump was interrupted by concurrent changes.
    #[error("conntrack dump: the kernel flagged it interrupted {attempts} times in a row")]
    DumpInterrupted { attempts: u32 },
}

/// One tracked IPv4 flow: its addresses, and its original tuple (and zone) as the kernel encoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub orig_src: Option<Ipv4Addr>,
    pub orig_dst: Option<Ipv4Addr>,
    pub reply_src: Option<Ipv4Addr>,
    pub reply_dst: Option<Ipv4Addr>,
    /// `CTA_TUPLE_ORIG` and `CTA_ZONE` attributes, header included, ready to send back.
    key: Vec<u8>,
}

impl Flow {
    /// Whether `addr` is a source or destination of the flow, in either direction.
    pub fn involves(&self, addr: Ipv4Addr) -> bool {
        [self.orig_src, self.orig_dst, self.reply_src, self.reply_dst].contains(&Some(addr))
    }
}

/// `(type, payload, whole attribute)` of each attribute in `buf`.
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len], &buf[..len]));
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or_default();
    }
    out
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).into_iter().find(|a| a.0 == ty).map(|a| a.1)
}

fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from)
}

/// `(src, dst)` of a tuple attribute's payload.
fn tuple_addrs(tuple: &[u8]) -> (Option<Ipv4Addr>, Option<Ipv4Addr>) {
    let ip = find(tuple, CTA_TUPLE_IP).unwrap_or_default();
    (
        find(ip, CTA_IP_V4_SRC).and_then(ipv4),
        find(ip, CTA_IP_V4_DST).and_then(ipv4),
    )
}

/// Parses a conntrack message's payload (after the netlink header).
fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let body = payload.get(NFGENMSG..)?;
    let all = attrs(body);
    let mut key = Vec::new();
    let mut flow = Flow {
        orig_src: None,
        orig_dst: None,
        reply_src: None,
        reply_dst: None,
        key: Vec::new(),
    };
    for (ty, value, whole) in all {
        match ty {
            CTA_TUPLE_ORIG => {
                (flow.orig_src, flow.orig_dst) = tuple_addrs(value);
                key.extend_from_slice(whole);
                key.resize((key.len() + 3) & !3, 0);
            }
            CTA_TUPLE_REPLY => (flow.reply_src, flow.reply_dst) = tuple_addrs(value),
            CTA_ZONE => {
                key.extend_from_slice(whole);
                key.resize((key.len() + 3) & !3, 0);
            }
            _ => {}
        }
    }
    if key.is_empty() {
        return None;
    }
    flow.key = key;
    Some(flow)
}

/// A ctnetlink socket in one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    sock: Socket,
    seq: AtomicU32,
}

impl Conntrack {
    /// A socket in the process's (the calling thread's) namespace.
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        sock.bind_auto().map_err(ConntrackError::Socket)?;
        Ok(Conntrack {
            sock,
            seq: AtomicU32::new(1),
        })
    }

    /// A socket in the namespace held open as `netns`.
    pub fn open_in(netns: &File) -> Result<Conntrack, ConntrackError> {
        let mut err = None;
        let opened = crate::in_netns_file(netns, Path::new("(namespace fd)"), || {
            Conntrack::open().map_err(|e| {
                err = Some(e);
                NetlinkError::HelperThread
            })
        });
        match (opened, err) {
            (Ok(c), _) => Ok(c),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }

    fn send(&self, ty: u16, flags: u16, attrs: &[u8]) -> Result<u32, ConntrackError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let len = HEADER + NFGENMSG + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[AF_INET, 0, 0, 0]);
        msg.extend_from_slice(attrs);
        self.sock.send(&msg, 0).map_err(ConntrackError::Socket)?;
        Ok(seq)
    }

    /// Reads the answer to request `seq`, calling `each` for every data message; returns whether any message
    /// carried `NLM_F_DUMP_INTR`.
    fn answer(
        &self,
        op: &'static str,
        seq: u32,
        mut each: impl FnMut(&[u8]),
    ) -> Result<bool, ConntrackError> {
        let mut interrupted = false;
        loop {
            let (buf, _) = self.sock.recv_from_full().map_err(ConntrackError::Socket)?;
            let mut rest = &buf[..];
            let mut done = false;
            while rest.len() >= HEADER {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < HEADER || len > rest.len() {
                    return Err(ConntrackError::Malformed { op });
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                let payload = &rest[HEADER..len];
                rest = rest.get((len + 3) & !3..).unwrap_or_default();
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(ConntrackError::Malformed { op })?;
                        if code != 0 {
                            return Err(ConntrackError::Kernel {
                                op,
                                source: std::io::Error::from_raw_os_error(-code),
                            });
                        }
                        done = true;
                    }
                    _ => {
                        each(payload);
                        if flags & NLM_F_MULTI == 0 {
                            done = true;
                        }
                    }
                }
            }
            if done {
                return Ok(interrupted);
            }
        }
    }

    /// Every IPv4 flow the kernel tracks in this namespace.
    pub fn flows(&self) -> Result<Vec<Flow>, ConntrackError> {
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.send(IPCTNL_MSG_CT_GET, NLM_F_DUMP, &[])?;
            let mut flows = Vec::new();
            let interrupted = self.answer("dump", seq, |p| flows.extend(parse_flow(p)))?;
            if !interrupted {
                return Ok(flows);
            }
        }
        Err(ConntrackError::DumpInterrupted {
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// Deletes one flow; `false` when it was already gone.
    pub fn delete(&self, flow: &Flow) -> Result<bool, ConntrackError> {
        let seq = self.send(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, &flow.key)?;
        match self.answer("delete", seq, |_| {}) {
            Ok(_) => Ok(true),
            Err(ConntrackError::Kernel { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes every flow `addr` takes part in; returns how many were deleted.
    pub fn delete_flows_of(&self, addr: Ipv4Addr) -> Result<usize, ConntrackError> {
        self.delete_flows_where(|f| f.involves(addr))
    }

    /// Deletes every flow `matches` selects, from one dump; returns how many were deleted.
    pub fn delete_flows_where(
        &self,
        matches: impl Fn(&Flow) -> bool,
    ) -> Result<usize, ConntrackError> {
        let mut deleted = 0;
        for flow in self.flows()?.iter().filter(|f| matches(f)) {
            if self.delete(flow)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    fn tuple(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ip = [nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)].concat();
        let proto = nla(1, &[6]);
        [nla(CTA_TUPLE_IP | 0x8000, &ip), nla(2 | 0x8000, &proto)].concat()
    }

    #[test]
    fn a_flow_is_parsed_with_both_directions_and_keeps_its_key() {
        let orig = nla(
            CTA_TUPLE_ORIG | 0x8000,
            &tuple([10, 0, 0, 5], [172, 20, 0, 10]),
        );
        let reply = nla(
            CTA_TUPLE_REPLY | 0x8000,
            &tuple([10, 0, 15, 250], [10, 0, 0, 5]),
        );
        let zone = nla(CTA_ZONE, &0u16.to_be_bytes());
        let mark = nla(8, &0x80u32.to_be_bytes());
        let payload = [
            vec![AF_INET, 0, 0, 0],
            orig.clone(),
            reply,
            mark,
            zone.clone(),
        ]
        .concat();
        let flow = parse_flow(&payload).expect("flow");
        assert_eq!(flow.orig_dst, Some(Ipv4Addr::new(172, 20, 0, 10)));
        assert_eq!(flow.reply_src, Some(Ipv4Addr::new(10, 0, 15, 250)));
        assert!(flow.involves(Ipv4Addr::new(10, 0, 0, 5)));
        assert!(flow.involves(Ipv4Addr::new(10, 0, 15, 250)));
        assert!(!flow.involves(Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(flow.key, [orig, zone].concat());
        assert_eq!(parse_flow(&[AF_INET, 0, 0, 0]), None);
    }

    /// Real flows in a throwaway namespace (inserted with the `conntrack` tool): only those of the released
    /// address are deleted, and deleting again finds nothing.
    #[test]
    fn the_flows_of_one_address_are_deleted_in_a_real_namespace() {
        if !nix::unistd::geteuid().is_root()
            || std::process::Command::new("conntrack")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("skipped: needs root and the conntrack tool");
            return;
        }
        use std::os::fd::AsRawFd;
        let ns = crate::new_anonymous_netns().expect("netns");
        let path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
        for (src, dst, sport) in [
            ("10.0.0.5", "172.20.0.10", "1000"),
            ("10.0.0.7", "10.0.0.5", "1001"),
            ("10.0.0.6", "172.20.0.10", "1002"),
        ] {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={path}"))
                .args(["conntrack", "-I", "-p", "udp", "-s", src, "-d", dst])
                .args(["--sport", sport, "--dport", "53", "--timeout", "300"])
                .output()
                .expect("conntrack -I");
            assert!(out.status.success(), "{out:?}");
        }
        let ct = Conntrack::open_in(&ns).expect("socket");
        assert_eq!(ct.flows().expect("dump").len(), 3);
        let released = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(ct.delete_flows_of(released).expect("delete"), 2);
        let left = ct.flows().expect("dump");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].orig_src, Some(Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(ct.delete_flows_of(released).expect("again"), 0);
    }
}
