//! [`Moto`]: a private `moto_server` (the EC2 API emulator from PyPI) on a free loopback port, stopped on drop.
//!
//! Each test starts its own server, so tests share no EC2 state and run in parallel. The server listens on
//! 127.0.0.1 only. It is started under `setpriv --pdeathsig KILL`, so even a test process killed outright
//! (no destructors) takes its moto with it. The venv comes from `scripts/deps.sh`
//! (`$AWS_CNI_TEST_VENV`, default `/opt/aws-cni-test-venv`).
//!
//! moto enforces no ENI or IP limits and implements no prefix delegation:
//! tests use it for API behaviour, never for limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// Where `scripts/deps.sh` puts the venv unless `AWS_CNI_TEST_VENV` says otherwise.
pub const DEFAULT_VENV: &str = "/opt/aws-cni-test-venv";
/// Dummy credentials moto accepts (any will do); tests pass them to the SDK and the binaries.
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
/// The region the tests' VPCs live in.
pub const REGION: &str = "us-east-1";

/// The `moto_server` executable.
pub fn moto_server() -> PathBuf {
    let venv = std::env::var_os("AWS_CNI_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let exe = venv.join("bin").join("moto_server");
    assert!(
        exe.exists(),
        "{} not found: run scripts/deps.sh (it installs moto[server] into {})",
        exe.display(),
        venv.display()
    );
    exe
}

/// A free TCP port on 127.0.0.1 (free now; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running moto server; see the module docs.
#[derive(Debug)]
pub struct Moto {
    pub addr: SocketAddr,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: Option<TempDir>,
}

impl Moto {
    /// Starts a server and waits until it answers (a few seconds at most).
    pub fn start() -> Moto {
        let exe = moto_server();
        let dir = TempDir::new();
        let log_path = dir.path().join("moto.log");
        // The port can be taken between our probe and moto's bind: try a few.
        for attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).expect("moto log");
            let child = Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "--"])
                .arg(&exe)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("spawn moto_server");
            let mut moto = Moto {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: Some(child),
                log_path: log_path.clone(),
                _dir: None,
            };
            if moto.wait_ready(Duration::from_secs(30)) {
                moto._dir = Some(dir);
                return moto;
            }
            eprintln!(
                "moto_server did not come up on port {port} (attempt {attempt}):\n{}",
                moto.log()
            );
            moto.stop();
        }
        panic!("moto_server would not start; see the output above");
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if self
                .get("/moto-api/")
                .is_some_and(|s| s.starts_with("HTTP/1."))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// One plain HTTP GET; the raw answer, or `None` if nothing answered.
    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Environment for a binary that should talk to this moto (dummy credentials, region, endpoint).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_EC2_ENDPOINT".into(), self.endpoint()),
        ]
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
