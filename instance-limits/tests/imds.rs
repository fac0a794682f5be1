//! IMDSv2 client against a tiny fake metadata server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use instance_limits::imds::{ImdsError, Imdsv2, InstanceTypeSource};
use instance_limits::{run, MaxPodsArgs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ec2_api::clock::{Clock, SystemClock};
use tiny_http::{Response, Server};

const TOKEN: &str = "AQAEAFake-Token==";

/// What the fake IMDS saw: (method, url, ttl header, token header).
type Seen = Vec<(String, String, Option<String>, Option<String>)>;

#[derive(Clone, Copy)]
struct Behaviour {
    /// Answer the first N token PUTs with HTTP 500.
    failing_puts: usize,
    /// Hand out a token the GET handler will not accept.
    wrong_token: bool,
    /// Body of the instance-type document.
    instance_type: &'static str,
}

struct FakeImds {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    endpoint: String,
}

fn header(request: &tiny_http::Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.to_string())
}

impl FakeImds {
    fn start(behaviour: Behaviour) -> FakeImds {
        let server = Arc::new(Server::http("127.0.0.1:0").unwrap());
        let endpoint = format!("http://{}", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Seen::new()));
        let (srv, log) = (Arc::clone(&server), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            let mut puts = 0;
            for request in srv.incoming_requests() {
                let method = request.method().to_string();
                let url = request.url().to_string();
                let ttl = header(&request, "X-aws-ec2-metadata-token-ttl-seconds");
                let token = header(&request, "X-aws-ec2-metadata-token");
                log.lock()
                    .unwrap()
                    .push((method.clone(), url.clone(), ttl.clone(), token.clone()));
                let response = match (method.as_str(), url.as_str()) {
                    ("PUT", "/latest/api/token") => {
                        puts += 1;
                        if puts <= behaviour.failing_puts {
                            Response::from_string("busy").with_status_code(500)
                        } else if ttl.as_deref() != Some("21600") {
                            Response::from_string("missing ttl").with_status_code(400)
                        } else if behaviour.wrong_token {
                            Response::from_string("stale-token")
                        } else {
                            Response::from_string(TOKEN)
                        }
                    }
                    ("GET", "/latest/meta-data/instance-type") => {
                        if token.as_deref() == Some(TOKEN) {
                            Response::from_string(behaviour.instance_type)
                        } else {
                            Response::from_string("").with_status_code(401)
                        }
                    }
                    _ => Response::from_string("not found").with_status_code(404),
                };
                let _ = request.respond(response);
            }
        });
        FakeImds {
            server,
            thread: Some(thread),
            seen,
            endpoint,
        }
    }

    fn client(&self) -> Imdsv2 {
        Imdsv2::new(self.endpoint.clone()).with_retry_delay(Duration::from_millis(10))
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const OK: Behaviour = Behaviour {
    failing_puts: 0,
    wrong_token: false,
    instance_type: "m5.large",
};

#[test]
fn token_then_instance_type() {
    let imds = FakeImds::start(OK);
    assert_eq!(imds.client().instance_type(), Ok("m5.large".to_string()));
    let seen = imds.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        (
            "PUT".into(),
            "/latest/api/token".into(),
            Some("21600".into()),
            None
        )
    );
    assert_eq!(
        seen[1],
        (
            "GET".into(),
            "/latest/meta-data/instance-type".into(),
            None,
            Some(TOKEN.into())
        )
    );
}

#[test]
fn retries_server_errors() {
    let imds = FakeImds::start(Behaviour {
        failing_puts: 2,
        ..OK
    });
    assert_eq!(imds.client().instance_type(), Ok("m5.large".to_string()));
    let puts = imds.seen().iter().filter(|s| s.0 == "PUT").count();
    assert_eq!(puts, 3);

    // One retry is not enough for two failures.
    let imds = FakeImds::start(Behaviour {
        failing_puts: 2,
        ..OK
    });
    let err = imds.client().with_retries(1).instance_type().unwrap_err();
    assert!(
        matches!(
            err,
            ImdsError::Status {
                status: 500,
                method: "PUT",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejected_token_fails_after_retries() {
    let imds = FakeImds::start(Behaviour {
        wrong_token: true,
        ..OK
    });
    let err = imds.client().instance_type().unwrap_err();
    assert!(
        matches!(
            err,
            ImdsError::Status {
                status: 401,
                method: "GET",
                ..
            }
        ),
        "{err}"
    );
    let gets = imds.seen().iter().filter(|s| s.0 == "GET").count();
    assert_eq!(gets, 3, "1 attempt + 2 retries");
}

#[test]
fn not_found_is_not_retried() {
    let imds = FakeImds::start(OK);
    let err = imds
        .client()
        .get_metadata("/latest/meta-data/nope")
        .unwrap_err();
    assert!(
        matches!(err, ImdsError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(imds.seen().len(), 2);
}

#[test]
fn garbage_instance_type_is_rejected() {
    let imds = FakeImds::start(Behaviour {
        instance_type: "<html>oops</html>",
        ..OK
    });
    let err = imds.client().instance_type().unwrap_err();
    assert!(matches!(err, ImdsError::Malformed { .. }), "{err}");
    let imds = FakeImds::start(Behaviour {
        instance_type: "  \n",
        ..OK
    });
    assert!(matches!(
        imds.client().instance_type(),
        Err(ImdsError::Empty { .. })
    ));
}

#[test]
fn unreachable_endpoint_fails_fast() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client =
        Imdsv2::new(format!("http://127.0.0.1:{port}")).with_retry_delay(Duration::from_millis(10));
    let clock = SystemClock::default();
    let err = client.instance_type().unwrap_err();
    assert!(
        matches!(err, ImdsError::Transport { method: "PUT", .. }),
        "{err}"
    );
    assert!(clock.now() < Duration::from_secs(10));
}

#[test]
fn max_pods_from_imds() {
    let imds = FakeImds::start(Behaviour {
        instance_type: "m5.xlarge",
        ..OK
    });
    let args = MaxPodsArgs {
        instance_type_from_imds: true,
        ..MaxPodsArgs::default()
    };
    let mut out = Vec::new();
    run(&args, &imds.client(), &mut out).unwrap();
    assert_eq!(out, b"58\n");
}
