//! The kill -9 torture test: pods churn through the real `aws-cni` while `ipamd` is killed with SIGKILL at random
//! moments (serving, filling its pool, talking to EC2, recovering) and started again, on a simulated node whose
//! EC2 state and ENI links survive the daemon as a real instance's do.
//!
//! The runtime side behaves as kubelet and containerd do: a failed ADD is followed by a DEL of the sandbox, and
//! DEL is retried until it succeeds (the plugin succeeds even with ipamd down). Afterwards, once the daemon has
//! settled and after one reconcile pass (SIGUSR1), the node must be exactly right, and the test prints and
//! asserts these counts, all zero:
//! - `duplicate_ips`: an IP held by two live pods, or twice in the checkpoint;
//! - `lost_pods`: a live pod whose IP is not in the checkpoint, or gone from its interface, or whose veth,
//!   host route or rule 512 is missing;
//! - `no_connectivity`: a live pod that cannot ping the node;
//! - `orphan_allocations`: an IP assigned (in the checkpoint, or in ipamd's memory) without a live pod;
//! - `stale_veths`, `stale_routes`, `stale_rules`, `stale_neighbours`: host veths, /32 routes, rules
//!   512/1536/32765, or VPC address bindings (the fabric's permanent neighbours) that nothing live accounts for;
//! - `ec2_disagreements`: a checkpointed IP EC2 does not assign to an attached ENI of the instance, or ipamd's
//!   ENIs and addresses, or the node's ENI links, differing from EC2's.
//!
//! Size and randomness come from the environment: `CRASH_TORTURE_PODS` (pods successfully added, default 500),
//! `CRASH_TORTURE_KILLS` (default 50), `CRASH_TORTURE_WORKERS` (concurrent runtimes, default 4),
//! `CRASH_TORTURE_SEED` (printed; set it to replay a run's random choices).

mod crash_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crash_support::{env_num, Pod, Rng, SimNode};
use integration_tests::arr;
use serde_json::Value;

/// ipamd's `RESTORE_SETTLE`: restored pods are confirmed by a check at least this long after the socket opened.
const SETTLE: Duration = Duration::from_secs(16);

#[derive(Debug, Default)]
struct Counts {
    duplicate_ips: usize,
    lost_pods: usize,
    no_connectivity: usize,
    orphan_allocations: usize,
    stale_veths: usize,
    stale_routes: usize,
    stale_rules: usize,
    stale_neighbours: usize,
    ec2_disagreements: usize,
    details: Vec<String>,
}

impl Counts {
    fn total(&self) -> usize {
        self.duplicate_ips
            + self.lost_pods
            + self.no_connectivity
            + self.orphan_allocations
            + self.stale_veths
            + self.stale_routes
            + self.stale_rules
            + self.stale_neighbours
            + self.ec2_disagreements
    }

    fn line(&self) -> String {
        format!(
            "duplicate_ips={} lost_pods={} no_connectivity={} orphan_allocations={} stale_veths={} \
             stale_routes={} stale_rules={} stale_neighbours={} ec2_disagreements={}",
            self.duplicate_ips,
            self.lost_pods,
            self.no_connectivity,
            self.orphan_allocations,
            self.stale_veths,
            self.stale_routes,
            self.stale_rules,
            self.stale_neighbours,
            self.ec2_disagreements
        )
    }

    fn note(&mut self, what: String) {
        if self.details.len() < 40 {
            self.details.push(what);
        }
    }
}

fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["-json", "-n", ns];
    full.extend_from_slice(args);
    let out = integration_tests::sh("ip", &full);
    assert!(out.status.success(), "ip {full:?}: {out:?}");
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Array(vec![])
    } else {
        serde_json::from_slice(&out.stdout).expect("ip json")
    }
}

/// Every check of the module docs, against the kernel (`ip -json`), the checkpoint file, `ipamd status` and the
/// simulator's saved state.
fn check(node: &SimNode, live: &[Pod]) -> Counts {
    let mut c = Counts::default();
    let node_ns = node.node.name.as_str();
    let (checkpoint, _) = node.checkpoint();
    let status = node.status();
    let ec2 = node.attached_enis();
    let node_ip = node.node_ip();

    // Live pods, by IP and by container.
    let mut by_ip: HashMap<String, usize> = HashMap::new();
    for p in live {
        *by_ip.entry(p.ip.clone().unwrap_or_default()).or_default() += 1;
    }
    for (ip, n) in &by_ip {
        if *n > 1 {
            c.duplicate_ips += n - 1;
            c.note(format!("{ip} held by {n} live pods"));
        }
    }
    let mut cp_by_ip: HashMap<&str, usize> = HashMap::new();
    for (_, ip) in &checkpoint {
        *cp_by_ip.entry(ip.as_str()).or_default() += 1;
    }
    for (ip, n) in &cp_by_ip {
        if *n > 1 {
            c.duplicate_ips += n - 1;
            c.note(format!("{ip} in the checkpoint {n} times"));
        }
    }

    let cp: BTreeMap<&str, &str> = checkpoint
        .iter()
        .map(|(k, ip)| (k.as_str(), ip.as_str()))
        .collect();
    let live_cids: BTreeSet<&str> = live.iter().map(|p| p.spec.container_id.as_str()).collect();
    let live_ips: BTreeSet<String> = live.iter().filter_map(|p| p.ip.clone()).collect();
    let live_veths: BTreeMap<String, String> = live
        .iter()
        .map(|p| (p.veth(), p.ip.clone().unwrap_or_default()))
        .collect();
    let links = arr(&ip_json(node_ns, &["link", "show"]));
    let link_names: BTreeSet<String> = links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    let routes = arr(&ip_json(node_ns, &["-4", "route", "show", "table", "all"]));
    let rules = arr(&ip_json(node_ns, &["-4", "rule", "show"]));
    let rule_ips = |prio: u64, field: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r["priority"] == prio)
            .filter_map(|r| r[field].as_str().map(str::to_string))
            .collect()
    };

    // Lost pods and connectivity.
    for p in live {
        let ip = p.ip.clone().unwrap_or_default();
        let mut problems = Vec::new();
        if cp.get(p.spec.container_id.as_str()) != Some(&ip.as_str()) {
            problems.push("not in the checkpoint with its IP");
        }
        if !p.addresses().contains(&ip) {
            problems.push("IP gone from its eth0");
        }
        if !link_names.contains(&p.veth()) {
            problems.push("host veth gone");
        }
        let has_route = routes.iter().any(|r| {
            r["dst"].as_str() == Some(ip.as_str()) && r["dev"].as_str() == Some(p.veth().as_str())
        });
        if !has_route {
            problems.push("host /32 route gone");
        }
        if !rule_ips(512, "dst").contains(&ip) {
            problems.push("rule 512 gone");
        }
        if !problems.is_empty() {
            c.lost_pods += 1;
            c.note(format!(
                "live pod {} ({ip}): {}",
                p.spec.name,
                problems.join(", ")
            ));
        }
        if !p.netns.ping(&node_ip) {
            c.no_connectivity += 1;
            c.note(format!(
                "live pod {} ({ip}) cannot ping the node {node_ip}",
                p.spec.name
            ));
        }
    }

    // Addresses assigned without a pod: on disk, and in ipamd's memory.
    for (cid, ip) in &checkpoint {
        if !live_cids.contains(cid.as_str()) {
            c.orphan_allocations += 1;
            c.note(format!(
                "checkpoint holds {ip} for {cid}, which is not a live pod"
            ));
        }
    }
    let mem: Vec<(String, String)> = arr(&status["pods"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["ip"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (name, ip) in &mem {
        if !live
            .iter()
            .any(|p| p.spec.name == *name && p.ip.as_deref() == Some(ip))
        {
            c.orphan_allocations += 1;
            c.note(format!(
                "ipamd holds {ip} for {name}, which is not a live pod"
            ));
        }
    }
    if mem.len() != checkpoint.len() {
        c.orphan_allocations += 1;
        c.note(format!(
            "ipamd holds {} addresses, the checkpoint {}",
            mem.len(),
            checkpoint.len()
        ));
    }

    // Host leftovers.
    for name in &link_names {
        if name.starts_with("eni") && !live_veths.contains_key(name) {
            c.stale_veths += 1;
            c.note(format!("stale veth {name}"));
        }
    }
    for r in &routes {
        let dst = r["dst"].as_str().unwrap_or("");
        let dev = r["dev"].as_str().unwrap_or("");
        if dev.starts_with("eni") && live_veths.get(dev).map(String::as_str) != Some(dst) {
            c.stale_routes += 1;
            c.note(format!("stale route {dst} dev {dev} table {}", r["table"]));
        }
    }
    let pod_tables: BTreeMap<String, u64> = arr(&status["pods"])
        .iter()
        .map(|p| {
            (
                p["ip"].as_str().unwrap_or("").to_string(),
                p["routeTable"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for ip in rule_ips(512, "dst") {
        if !live_ips.contains(&ip) {
            c.stale_rules += 1;
            c.note(format!("stale rule 512 to {ip}"));
        }
    }
    for r in rules.iter().filter(|r| r["priority"] == 1536) {
        let ip = r["src"].as_str().unwrap_or("").to_string();
        let table = r["table"].as_str().and_then(|t| t.parse::<u64>().ok());
        if !live_ips.contains(&ip) || table != pod_tables.get(&ip).copied() {
            c.stale_rules += 1;
            c.note(format!("stale rule 1536 from {ip} table {}", r["table"]));
        }
    }
    let eni_primaries: BTreeSet<String> = node.sim_state()["enis"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|e| e["device_index"].as_u64().is_some_and(|d| d > 0))
                .filter_map(|e| e["primary_ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for ip in rule_ips(32765, "src") {
        if !eni_primaries.contains(&ip) {
            c.stale_rules += 1;
            c.note(format!(
                "stale rule 32765 from {ip} (no attached ENI has it)"
            ));
        }
    }

    // VPC bindings (the fabric's permanent neighbours) against EC2, and neighbours on the node.
    let bound: BTreeSet<String> = ec2.values().flat_map(|(_, _, ips)| ips.clone()).collect();
    let neigh: BTreeSet<String> = arr(&ip_json(
        &node.fabric.name,
        &["-4", "neigh", "show", "nud", "permanent"],
    ))
    .iter()
    .filter_map(|n| n["dst"].as_str().map(str::to_string))
    .collect();
    for ip in neigh.symmetric_difference(&bound) {
        c.stale_neighbours += 1;
        c.note(format!("VPC binding of {ip} differs from EC2"));
    }
    for n in arr(&ip_json(
        node_ns,
        &["-4", "neigh", "show", "nud", "permanent"],
    )) {
        c.stale_neighbours += 1;
        c.note(format!("permanent neighbour on the node: {n}"));
    }

    // EC2 against the checkpoint, ipamd and the node's links.
    for (cid, ip) in &checkpoint {
        if !bound.contains(ip) {
            c.ec2_disagreements += 1;
            c.note(format!(
                "checkpointed {ip} ({cid}) is not assigned to an attached ENI in EC2"
            ));
        }
    }
    let ipamd_enis: BTreeMap<String, u64> = arr(&status["enis"])
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or("").to_string(),
                e["total"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (id, (_, _, ips)) in &ec2 {
        if ipamd_enis.get(id) != Some(&(ips.len() as u64)) {
            c.ec2_disagreements += 1;
            c.note(format!(
                "ENI {id}: EC2 has {} addresses, ipamd {:?}",
                ips.len(),
                ipamd_enis.get(id)
            ));
        }
    }
    for id in ipamd_enis.keys() {
        if !ec2.contains_key(id) {
            c.ec2_disagreements += 1;
            c.note(format!("ipamd has ENI {id}, EC2 does not attach it"));
        }
    }
    let eni_links: BTreeSet<(String, String)> = links
        .iter()
        .filter(|l| {
            l["ifname"]
                .as_str()
                .and_then(|n| n.strip_prefix("eth"))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or("").to_string(),
                l["address"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want_links: BTreeSet<(String, String)> = ec2
        .values()
        .map(|(mac, dev, _)| (format!("eth{dev}"), mac.clone()))
        .collect();
    for l in eni_links.symmetric_difference(&want_links) {
        c.ec2_disagreements += 1;
        c.note(format!("ENI link {l:?} differs from EC2's attachments"));
    }
    c
}

/// Waits (at most 40 s) until two looks at the pool 500 ms apart both find it holding.
fn wait_pool_quiet(node: &SimNode) {
    let holding = || {
        let d = node.status()["lastDecision"]
            .as_str()
            .unwrap_or("")
            .to_string();
        d.starts_with("Hold") || d.starts_with("AtEniLimit")
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if holding() {
            std::thread::sleep(Duration::from_millis(500));
            if holding() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One runtime: adds and deletes pods until told to stop, keeping a few alive. Returns its live pods.
#[allow(clippy::too_many_arguments)]
fn runtime(
    node: &SimNode,
    worker: u64,
    seed: u64,
    pods_target: u64,
    stop: &AtomicBool,
    added: &AtomicU64,
    deleted: &AtomicU64,
    add_failures: &Mutex<BTreeMap<String, u64>>,
    errors: &Mutex<Vec<String>>,
) -> Vec<Pod> {
    let mut rng = Rng::new(seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut live: Vec<Pod> = Vec::new();
    let mut target = rng.range(1, 6);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if rng.range(0, 10) == 0 {
            target = rng.range(1, 6);
        }
        let may_add = added.load(Ordering::SeqCst) < pods_target;
        if live.len() < target as usize && may_add {
            n += 1;
            let mut pod = Pod::new(
                &format!("t{worker}-{n}"),
                &format!("ctr-{seed:x}-{worker}-{n}"),
            );
            let out = pod.add(node);
            if out.success {
                added.fetch_add(1, Ordering::SeqCst);
                live.push(pod);
            } else {
                let code = out.code();
                let reason = format!("{code}: {}", first_words(&out.json["msg"]));
                *add_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(reason)
                    .or_default() += 1;
                // The runtime tears the failed sandbox down: DEL, without a prevResult.
                pod.ip = None;
                del_until_done(node, &pod, errors);
                std::thread::sleep(Duration::from_millis(rng.range(20, 120)));
            }
        } else if !live.is_empty()
            && (live.len() > target as usize || (may_add && rng.range(0, 2) == 0))
        {
            let i = rng.range(0, live.len() as u64) as usize;
            let pod = live.swap_remove(i);
            del_until_done(node, &pod, errors);
            deleted.fetch_add(1, Ordering::SeqCst);
        } else if !may_add {
            // Enough pods: keep the live ones for the final checks.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    live
}

fn first_words(v: &Value) -> String {
    v.as_str()
        .unwrap_or("")
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

/// DEL as containerd does: retried until it succeeds.
fn del_until_done(node: &SimNode, pod: &Pod, errors: &Mutex<Vec<String>>) {
    for attempt in 0..10 {
        let out = pod.del(node);
        if out.success {
            return;
        }
        if attempt == 9 {
            errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "DEL of {} keeps failing: {}",
                    pod.spec.name, out.stdout
                ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_torture() {
    let pods_target = env_num("CRASH_TORTURE_PODS", 500);
    let kills = env_num("CRASH_TORTURE_KILLS", 50);
    let workers = env_num("CRASH_TORTURE_WORKERS", 4);
    let seed = env_num(
        "CRASH_TORTURE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    println!("torture: seed={seed} pods={pods_target} kills={kills} workers={workers}");
    let started = Instant::now();
    // A small node, so the pool attaches, fills and frees ENIs while pods churn; a short cooldown so addresses
    // are reused often (reuse is where duplicates would show); no release hysteresis, so the pool gives
    // addresses and ENIs back within the run (the release paths are where crashes hurt most).
    let node = SimNode::new(
        "m5.large",
        &[
            ("WARM_IP_TARGET", "3"),
            ("MINIMUM_IP_TARGET", "4"),
            ("IP_COOLDOWN_PERIOD", "1"),
            ("AWS_CNI_POOL_RELEASE_DELAY", "0"),
        ],
    );
    node.start();

    let stop = AtomicBool::new(false);
    let added = AtomicU64::new(0);
    let deleted = AtomicU64::new(0);
    let kills_done = AtomicU64::new(0);
    let recovery_kills = AtomicU64::new(0);
    let add_failures = Mutex::new(BTreeMap::new());
    let errors = Mutex::new(Vec::new());
    let live: Vec<Pod> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (node, stop, added, deleted) = (&node, &stop, &added, &deleted);
                let (add_failures, errors) = (&add_failures, &errors);
                s.spawn(move || {
                    runtime(
                        node,
                        w,
                        seed,
                        pods_target,
                        stop,
                        added,
                        deleted,
                        add_failures,
                        errors,
                    )
                })
            })
            .collect();
        // The killer: SIGKILL at random moments, sometimes while the daemon is still recovering.
        let mut rng = Rng::new(seed);
        // Spread the kills over the time the churn is expected to take (about 8 pods a second), at least 250 ms
        // apart, so they land in every phase of it.
        let per_kill_ms = (pods_target * 1000 / 8 / kills.max(1)).clamp(250, 3000);
        for _ in 0..kills {
            std::thread::sleep(Duration::from_millis(
                rng.range(per_kill_ms / 3, per_kill_ms * 5 / 3),
            ));
            node.kill9();
            kills_done.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
            if rng.range(0, 5) == 0 {
                // Killed again in the middle of its recovery.
                node.spawn(&[]);
                std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
                node.kill9();
                recovery_kills.fetch_add(1, Ordering::SeqCst);
                kills_done.fetch_add(1, Ordering::SeqCst);
                if kills_done.load(Ordering::SeqCst) >= kills {
                    node.start();
                    break;
                }
            }
            node.start();
            if kills_done.load(Ordering::SeqCst) >= kills {
                break;
            }
        }
        while added.load(Ordering::SeqCst) < pods_target {
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                started.elapsed() < Duration::from_secs(1800),
                "churn too slow: {} pods in 30 min",
                added.load(Ordering::SeqCst)
            );
        }
        stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("runtime thread"))
            .collect()
    });
    let churn = started.elapsed();
    assert!(
        node.running(),
        "ipamd died on its own:\n{}",
        node.log_tail(60)
    );

    // Let the last restart settle (restored pods are confirmed no earlier), then one reconcile pass.
    if let Some(t) = node.last_start() {
        let since = t.elapsed();
        if since < SETTLE {
            std::thread::sleep(SETTLE - since);
        }
    }
    let before = check(&node, &live);
    println!("torture: before reconcile: {}", before.line());
    node.reconcile();
    // Releases made by the pass reach the checkpoint through the background flusher within a second.
    std::thread::sleep(Duration::from_millis(1500));
    // The files, the kernel and the daemon are read one after the other, so a pool step (giving addresses back
    // to EC2) in between would show as a disagreement that is none: read while the pool holds, and read again
    // (at most twice) if anything differs. Real leftovers do not go away by waiting seconds.
    let mut after = Counts::default();
    for attempt in 0..3 {
        wait_pool_quiet(&node);
        after = check(&node, &live);
        if after.total() == 0 {
            break;
        }
        println!("torture: attempt {attempt}: {}", after.line());
        std::thread::sleep(Duration::from_secs(2));
    }

    let failures = add_failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    println!(
        "torture: {} pods added, {} deleted, {} live; {} kills ({} during recovery); churn {:.1}s, total {:.1}s",
        added.load(Ordering::SeqCst),
        deleted.load(Ordering::SeqCst),
        live.len(),
        kills_done.load(Ordering::SeqCst),
        recovery_kills.load(Ordering::SeqCst),
        churn.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("torture: failed ADDs by CNI code (retried by the runtime): {failures:?}");
    let leaked = node.sim_state()["enis"].as_object().map_or(0, |m| {
        m.values().filter(|e| e["status"] == "available").count()
    });
    println!(
        "torture: ENIs left available in EC2 by kills between create and attach or detach and delete \
         (deleted by the leaked-ENI cleanup after 5 min): {leaked}"
    );
    println!("torture: after reconcile: {}", after.line());
    for d in &after.details {
        println!("torture:   {d}");
    }
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(errors.is_empty(), "runtime errors: {errors:?}");
    assert!(
        failures
            .keys()
            .all(|k| ["11:", "101:", "102:"].iter().any(|c| k.starts_with(c))),
        "ADDs failed for reasons other than ipamd being away or full: {failures:?}"
    );
    assert!(added.load(Ordering::SeqCst) >= pods_target);
    assert!(kills_done.load(Ordering::SeqCst) >= kills);
    assert_eq!(
        after.total(),
        0,
        "torture counts not all zero: {}\n{:#?}\n{}",
        after.line(),
        after.details,
        node.log_tail(80)
    );

    // Finally the runtime deletes every pod, and ipamd stops cleanly on SIGTERM with an empty checkpoint.
    for p in &live {
        let out = p.del(&node);
        assert!(out.success, "DEL: {}", out.stdout);
    }
    let (status, took) = node
        .term(Duration::from_secs(30))
        .expect("ipamd stops on SIGTERM");
    assert!(status.success(), "exit {status}:\n{}", node.log_tail(40));
    println!("torture: SIGTERM to exit: {took:?}");
    assert!(node.checkpoint().0.is_empty(), "{:?}", node.checkpoint().0);
}
