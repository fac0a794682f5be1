//! A small Kubernetes API server for the tests: the REST and watch protocol for the objects ipamd uses.
//!
//! It serves plain HTTP on a loopback port inside a test node's network namespace (see
//! [`crate::netns_port`]), so `ipamd run --netns` reaches it through a kubeconfig ([`KubeApiServer::kubeconfig`]).
//!
//! * Nodes (`/api/v1/nodes`, with `fieldSelector=metadata.name=...`), ENIConfigs
//!   (`/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs`, cluster-scoped), Pods (`GET`/`PATCH`
//!   `/api/v1/namespaces/NS/pods/NAME`, JSON merge patch and strategic merge patch as a merge patch, a
//!   `metadata.resourceVersion` in the patch that is not the pod's is a 409 Conflict), Events (`POST
//!   /api/v1/namespaces/NS/events`).
//! * Leases (`/apis/coordination.k8s.io/v1/namespaces/NS/leases[/NAME]`): GET, POST (409 AlreadyExists when
//!   present), PUT whose `metadata.resourceVersion` is not the stored one answers 409 Conflict; every lease
//!   request answers 403 Forbidden while [`KubeApiServer::set_leases_forbidden`] says so; the next N PUTs of a
//!   lease lose a race to another node's write ([`KubeApiServer::race_lease_writes`]).
//! * A list answers the objects with the store's `resourceVersion`; `?watch=1` streams (chunked, one JSON event a
//!   line) every change after the given `resourceVersion` as ADDED/MODIFIED/DELETED, and a BOOKMARK every half
//!   second; a watch from a `resourceVersion` older than the compaction point gets a 410 Gone (`Expired`) ERROR
//!   event, which makes a client re-list ([`KubeApiServer::expire_watches`]).
//! * The test changes objects while the daemon runs ([`KubeApiServer::put`], [`KubeApiServer::delete`]) and stops
//!   and restarts the server ([`KubeApiServer::stop`], [`KubeApiServer::restart`]): the objects survive, every open
//!   connection is closed, and connections are refused while it is stopped.
//!
//! Every request is recorded ([`KubeApiServer::requests`]) so a test can see lists, watches and writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

/// Which collection an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Node,
    EniConfig,
    Pod,
    Event,
    Lease,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::EniConfig => "crd.k8s.amazonaws.com/v1alpha1",
            Kind::Lease => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::EniConfig => "ENIConfig",
            Kind::Pod => "Pod",
            Kind::Event => "Event",
            Kind::Lease => "Lease",
        }
    }
}

/// Key of an object: kind, namespace ("" for cluster-scoped), name.
type Key = (Kind, String, String);

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change: (resourceVersion, type, key, object).
    history: Vec<(u64, &'static str, Key, Value)>,
    /// "METHOD path?query" of every request.
    requests: Vec<String>,
    /// The ENIConfig CRD is not installed: its paths answer 404.
    no_eni_config_crd: bool,
    /// Leases answer 403 Forbidden (a service account without lease rights).
    leases_forbidden: bool,
    /// PUTs of a lease that still lose a race to another node's write (see `race_lease_writes`).
    lease_races: u32,
}

#[derive(Debug, Default)]
struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    /// Bumped by stop(): every connection of an older generation closes.
    generation: AtomicU64,
    running: AtomicBool,
}

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// See the module docs.
#[derive(Debug)]
pub struct KubeApiServer {
    shared: Arc<Shared>,
    netns: PathBuf,
    pub port: u16,
    accept: Option<JoinHandle<()>>,
}

/// Binds `127.0.0.1:port` inside the namespace at `netns` (0: any port).
fn bind_in(netns: &Path, port: u16) -> TcpListener {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = File::open(&netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the node namespace");
        // A restart binds the same port while old connections may linger in TIME_WAIT: std sets SO_REUSEADDR.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => return l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind 127.0.0.1:{port} in the node namespace: {e}"),
            }
        }
    })
    .join()
    .expect("bind thread")
}

impl KubeApiServer {
    /// Starts serving inside the namespace at `netns` (e.g. `/run/netns/NAME`).
    pub fn start(netns: &Path) -> KubeApiServer {
        let listener = bind_in(netns, 0);
        let port = listener.local_addr().expect("local addr").port();
        let mut me = KubeApiServer {
            shared: Arc::new(Shared::default()),
            netns: netns.to_path_buf(),
            port,
            accept: None,
        };
        me.serve(listener);
        me
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        self.shared.running.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        let generation = shared.generation.load(Ordering::SeqCst);
        self.accept = Some(std::thread::spawn(move || loop {
            if shared.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve_connection(conn, &shared, generation));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }));
    }

    /// Stops accepting and closes every open connection (watches included). Objects are kept.
    pub fn stop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }

    /// Serves again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let listener = bind_in(&self.netns, self.port);
        self.serve(listener);
    }

    /// A kubeconfig for this server, written to `dir/kubeconfig`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n\
             users:\n- name: test\n  user:\n    token: test-token\n",
            self.port
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers); its resourceVersion is set.
    pub fn put(&self, kind: Kind, namespace: &str, mut obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let mut st = lock(&self.shared.store);
        st.rv += 1;
        let rv = st.rv;
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.name());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if !namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        let key = (kind, namespace.to_string(), name);
        let ty = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key.clone(), obj.clone());
        st.history.push((rv, ty, key, obj));
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut st = lock(&self.shared.store);
        let key = (kind, namespace.to_string(), name.to_string());
        if let Some(mut obj) = st.objects.remove(&key) {
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let rv = st.rv;
            st.history.push((rv, "DELETED", key, obj));
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// An object as stored.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.store)
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn all(&self, kind: Kind) -> Vec<Value> {
        lock(&self.shared.store)
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Answers 404 for the ENIConfig paths (a cluster without the CRD), or serves them again.
    pub fn set_eni_config_crd(&self, installed: bool) {
        lock(&self.shared.store).no_eni_config_crd = !installed;
    }

    /// Answers 403 Forbidden for every lease request (an aws-node ClusterRole without lease rights), or serves
    /// them again.
    pub fn set_leases_forbidden(&self, forbidden: bool) {
        lock(&self.shared.store).leases_forbidden = forbidden;
    }

    /// The next `n` PUTs of a lease each lose a race: another node's write lands just before it (the stored
    /// lease gets a new resourceVersion, its content unchanged), so the PUT's version is stale and it answers
    /// 409 Conflict, as the API server does when nodes reserve at once.
    pub fn race_lease_writes(&self, n: u32) {
        lock(&self.shared.store).lease_races = n;
    }

    /// Every request so far, as "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.store).requests.clone()
    }

    /// Compacts the history and cuts every connection: the clients come back with their (now too old)
    /// resourceVersion, get 410 Gone, and must re-list.
    pub fn expire_watches(&mut self) {
        let mut st = lock(&self.shared.store);
        st.rv += 1;
        st.compacted = st.rv;
        drop(st);
        self.restart();
    }

    /// How many lists (not watches) of `kind`'s collection were served.
    pub fn lists(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.starts_with(&format!("GET {path}?"))
                    && !r.contains("watch=true")
                    && !r.contains("watch=1")
            })
            .count()
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node object with `capacity.pods` and `spec.unschedulable`.
pub fn node(name: &str, capacity_pods: u32, unschedulable: bool) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"unschedulable": unschedulable},
        "status": {"capacity": {"pods": capacity_pods.to_string(), "cpu": "2"}},
    })
}

/// A pod object.
pub fn pod(namespace: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace, "annotations": {}}, "spec": {}})
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    }))
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )?;
    w.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
           "reason": reason, "code": code})
}

/// The collection a path names, and the object name if it names one.
fn route(path: &str) -> Option<(Kind, String, Option<String>)> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    match seg.as_slice() {
        ["api", "v1", "nodes"] => Some((Kind::Node, String::new(), None)),
        ["api", "v1", "nodes", n] => Some((Kind::Node, String::new(), Some(n.to_string()))),
        ["apis", "crd.k8s.amazonaws.com", "v1alpha1", "eniconfigs"] => {
            Some((Kind::EniConfig, String::new(), None))
        }
        ["apis", "crd.k8s.amazonaws.com", "v1alpha1", "eniconfigs", n] => {
            Some((Kind::EniConfig, String::new(), Some(n.to_string())))
        }
        ["api", "v1", "namespaces", ns, "pods"] => Some((Kind::Pod, ns.to_string(), None)),
        ["api", "v1", "namespaces", ns, "pods", n] => {
            Some((Kind::Pod, ns.to_string(), Some(n.to_string())))
        }
        ["api", "v1", "namespaces", ns, "events"] => Some((Kind::Event, ns.to_string(), None)),
        ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"] => {
            Some((Kind::Lease, ns.to_string(), None))
        }
        ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", n] => {
            Some((Kind::Lease, ns.to_string(), Some(n.to_string())))
        }
        _ => None,
    }
}

fn selected(q: &BTreeMap<String, String>, obj: &Value) -> bool {
    match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        None => true,
        Some(sel) => sel.split(',').all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => obj["metadata"]["name"] == v,
            _ => true,
        }),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn serve_connection(conn: TcpStream, shared: &Shared, generation: u64) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let req = match read_request(&mut r) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        };
        // A request that arrived while stop() ran (this thread was waiting in the read) is not served: the
        // connection closes unanswered, as a server that went away leaves it.
        if shared.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let _ = r
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)));
        let q: String = req
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        lock(&shared.store)
            .requests
            .push(format!("{} {}?{q}", req.method, req.path));
        let watch = matches!(
            req.query.get("watch").map(String::as_str),
            Some("1" | "true")
        );
        let no_crd = lock(&shared.store).no_eni_config_crd;
        let route = route(&req.path).filter(|r| !(no_crd && r.0 == Kind::EniConfig));
        let forbidden = lock(&shared.store).leases_forbidden;
        let result = match (req.method.as_str(), route) {
            (_, Some((Kind::Lease, ns, _))) if forbidden => respond(
                &mut w,
                403,
                &status(
                    403,
                    "Forbidden",
                    &format!(
                        "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:kube-system:aws-node\" \
                         cannot access resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"{ns}\""
                    ),
                ),
            ),
            ("POST", Some((Kind::Lease, ns, None))) => create_lease(&mut w, shared, &ns, &req.body),
            ("PUT", Some((Kind::Lease, ns, Some(name)))) => {
                replace_lease(&mut w, shared, &ns, &name, &req.body)
            }
            ("GET", Some((kind, ns, None))) if watch => {
                let _ = stream_watch(&mut w, shared, generation, kind, &ns, &req.query);
                return;
            }
            ("GET", Some((kind, ns, None))) => list(&mut w, shared, kind, &ns, &req.query),
            ("GET", Some((kind, ns, Some(name)))) => {
                let obj = lock(&shared.store)
                    .objects
                    .get(&(kind, ns, name.clone()))
                    .cloned();
                match obj {
                    Some(o) => respond(&mut w, 200, &o),
                    None => respond(
                        &mut w,
                        404,
                        &status(404, "NotFound", &format!("{name} not found")),
                    ),
                }
            }
            ("PATCH", Some((Kind::Pod, ns, Some(name)))) => {
                patch(&mut w, shared, &ns, &name, &req.body)
            }
            ("POST", Some((Kind::Event, ns, None))) => {
                let mut ev: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let mut st = lock(&shared.store);
                st.rv += 1;
                let name = format!("event-{}", st.rv);
                ev["metadata"]["name"] = json!(name);
                ev["metadata"]["namespace"] = json!(ns);
                st.objects.insert((Kind::Event, ns, name), ev.clone());
                drop(st);
                respond(&mut w, 201, &ev)
            }
            _ => respond(
                &mut w,
                404,
                &status(404, "NotFound", "no such resource in the test server"),
            ),
        };
        if result.is_err() {
            return;
        }
    }
}

fn list(
    w: &mut TcpStream,
    shared: &Shared,
    kind: Kind,
    ns: &str,
    q: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let st = lock(&shared.store);
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|(k, v)| k.0 == kind && (ns.is_empty() || k.1 == ns) && selected(q, v))
        .map(|(_, v)| v.clone())
        .collect();
    let body = json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()),
                      "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    drop(st);
    respond(w, 200, &body)
}

fn chunk(w: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(w, "{:x}\r\n{line}\r\n", line.len())?;
    w.flush()
}

fn stream_watch(
    w: &mut TcpStream,
    shared: &Shared,
    generation: u64,
    kind: Kind,
    ns: &str,
    q: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    w.flush()?;
    {
        let st = lock(&shared.store);
        if from < st.compacted {
            drop(st);
            chunk(
                w,
                &json!({"type": "ERROR", "object": status(410, "Expired",
                    &format!("too old resource version: {from}"))}),
            )?;
            return write!(w, "0\r\n\r\n");
        }
    }
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation
            || !shared.running.load(Ordering::SeqCst)
        {
            return Ok(()); // dropped without the final chunk: the connection is cut, as a dying server would
        }
        let mut st = lock(&shared.store);
        let events: Vec<(u64, &'static str, Value)> = st
            .history
            .iter()
            .filter(|(rv, _, key, obj)| {
                *rv > from && key.0 == kind && (ns.is_empty() || key.1 == ns) && selected(q, obj)
            })
            .map(|(rv, ty, _, obj)| (*rv, *ty, obj.clone()))
            .collect();
        let current = st.rv;
        if events.is_empty() {
            st = shared
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            drop(st);
        } else {
            drop(st);
        }
        for (rv, ty, obj) in events {
            chunk(w, &json!({"type": ty, "object": obj}))?;
            from = rv;
        }
        if bookmarks && last_bookmark.elapsed() >= Duration::from_millis(500) {
            from = from.max(current);
            chunk(
                w,
                &json!({"type": "BOOKMARK", "object": {"apiVersion": kind.api_version(), "kind": kind.name(),
                        "metadata": {"resourceVersion": from.to_string()}}}),
            )?;
            last_bookmark = Instant::now();
        }
        if started.elapsed() >= timeout {
            return write!(w, "0\r\n\r\n");
        }
    }
}

/// Stores `obj` as `key` with the next resourceVersion (ADDED or MODIFIED to watchers) and answers it.
fn store_and_answer(
    w: &mut TcpStream,
    shared: &Shared,
    mut st: MutexGuard<'_, Store>,
    key: Key,
    mut obj: Value,
    code: u16,
) -> std::io::Result<()> {
    st.rv += 1;
    let rv = st.rv;
    obj["apiVersion"] = json!(key.0.api_version());
    obj["kind"] = json!(key.0.name());
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    obj["metadata"]["namespace"] = json!(key.1);
    let ty = if st.objects.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    st.objects.insert(key.clone(), obj.clone());
    st.history.push((rv, ty, key, obj.clone()));
    drop(st);
    shared.changed.notify_all();
    respond(w, code, &obj)
}

/// POST of a Lease: 409 AlreadyExists when one of that name exists.
fn create_lease(w: &mut TcpStream, shared: &Shared, ns: &str, body: &[u8]) -> std::io::Result<()> {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return respond(w, 400, &status(400, "BadRequest", "body is not JSON"));
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return respond(
            w,
            400,
            &status(400, "BadRequest", "metadata.name is required"),
        );
    };
    let st = lock(&shared.store);
    let key = (Kind::Lease, ns.to_string(), name.clone());
    if st.objects.contains_key(&key) {
        drop(st);
        return respond(
            w,
            409,
            &status(
                409,
                "AlreadyExists",
                &format!("leases \"{name}\" already exists"),
            ),
        );
    }
    store_and_answer(w, shared, st, key, obj, 201)
}

/// PUT of a Lease: its `metadata.resourceVersion` must be the stored one (else 409 Conflict), as the API server
/// does for an update.
fn replace_lease(
    w: &mut TcpStream,
    shared: &Shared,
    ns: &str,
    name: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return respond(w, 400, &status(400, "BadRequest", "body is not JSON"));
    };
    let mut st = lock(&shared.store);
    let key = (Kind::Lease, ns.to_string(), name.to_string());
    let Some(mut current) = st.objects.get(&key).cloned() else {
        drop(st);
        return respond(
            w,
            404,
            &status(404, "NotFound", &format!("leases \"{name}\" not found")),
        );
    };
    if st.lease_races > 0 {
        // Another node's write lands first.
        st.lease_races -= 1;
        st.rv += 1;
        let rv = st.rv;
        current["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key.clone(), current.clone());
        st.history
            .push((rv, "MODIFIED", key.clone(), current.clone()));
        shared.changed.notify_all();
    }
    if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        drop(st);
        return respond(
            w,
            409,
            &status(
                409,
                "Conflict",
                "Operation cannot be fulfilled on leases.coordination.k8s.io: the object has been modified; \
                 please apply your changes to the latest version and try again",
            ),
        );
    }
    store_and_answer(w, shared, st, key, obj, 200)
}

fn patch(
    w: &mut TcpStream,
    shared: &Shared,
    ns: &str,
    name: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let Ok(p) = serde_json::from_slice::<Value>(body) else {
        return respond(w, 400, &status(400, "BadRequest", "patch is not JSON"));
    };
    let mut st = lock(&shared.store);
    let key = (Kind::Pod, ns.to_string(), name.to_string());
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        drop(st);
        return respond(
            w,
            404,
            &status(404, "NotFound", &format!("pods \"{name}\" not found")),
        );
    };
    if let Some(want) = p["metadata"]["resourceVersion"].as_str() {
        if Some(want) != obj["metadata"]["resourceVersion"].as_str() {
            drop(st);
            return respond(
                w,
                409,
                &status(409, "Conflict", "the object has been modified"),
            );
        }
    }
    merge(&mut obj, &p);
    st.rv += 1;
    let rv = st.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.objects.insert(key.clone(), obj.clone());
    st.history.push((rv, "MODIFIED", key, obj.clone()));
    drop(st);
    shared.changed.notify_all();
    respond(w, 200, &obj)
}
