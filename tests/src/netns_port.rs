//! Loopback ports inside a test node's network namespace.
//!
//! A daemon under test runs in a node namespace and reaches "EC2" and "IMDS" at `127.0.0.1:<port>`, which is
//! that namespace's loopback, not the test's. Two tools bridge them without any address outside loopback:
//!
//! * [`bind_in_netns`]: a short-lived thread enters the namespace, binds a listener there, and hands it back.
//!   A socket stays in the namespace it was created in, so the test then serves it from its own threads (the
//!   IMDS test server does exactly that).
//! * [`PortForward`]: a listener bound in the namespace whose connections are piped to an address in the
//!   test's namespace (moto's port). Dropping it stops accepting and shuts every piped connection.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// A listener on `127.0.0.1:0` inside the namespace at `netns` (e.g. `/run/netns/NAME`).
pub fn bind_in_netns(netns: &Path) -> TcpListener {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = File::open(&netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        // Only this thread moves; it ends right after binding.
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the node namespace");
        TcpListener::bind("127.0.0.1:0").expect("bind in the node namespace")
    })
    .join()
    .expect("bind thread")
}

/// See the module docs.
#[derive(Debug)]
pub struct PortForward {
    /// The port inside the namespace.
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl PortForward {
    /// Forwards `127.0.0.1:<port>` in `netns` to `target` (in the caller's namespace).
    pub fn start(netns: &Path, target: SocketAddr) -> PortForward {
        let listener = bind_in_netns(netns);
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let stop = Arc::clone(&stop);
            let conns = Arc::clone(&conns);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((inbound, _)) => pipe(inbound, target, &conns),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PortForward {
            port,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>`, as seen from inside the namespace.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(inbound: TcpStream, target: SocketAddr, conns: &Mutex<Vec<TcpStream>>) {
    let _ = inbound.set_nonblocking(false);
    let Ok(outbound) = TcpStream::connect(target) else {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
        let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
        c.push(a);
        c.push(b);
    }
    copy_then_close(inbound, outbound);
    copy_then_close(out2, in2);
}

/// Copies `from` to `to` on a thread; when `from` ends, ends `to`'s write side.
fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
