//! A history checker for the replicated flags table: concurrent clients CREATE, SET and GET a
//! small set of flags with short deadlines while catalog leaders are stopped and restarted;
//! every call and answer is recorded and checked per flag against FALSE → exactly one of
//! {TRUE, ERROR}, in real-time order.

use mcloud::cluster::{CatalogSpec, ClusterOptions, ClusterSpec, LocalCluster, GATEWAY};
use mcloud_catalog::{CatalogError, FlagTable};
use mcloud_core::wire::{CreateFlag, FlagState};
use mcloud_core::BatchId;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Flag `n` of the gateway sensor, whose session the cluster's catalog client shows.
fn gw(n: u128) -> BatchId {
    BatchId(((GATEWAY.sensor as u128) << 96) | n)
}

/// What one call says about a flag.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seen {
    Absent,
    False,
    True,
    Error,
    /// SET refused for the deadline: the flag can never be TRUE.
    NeverTrue,
}

#[derive(Clone, Debug)]
struct Event {
    id: u128,
    start: Instant,
    end: Instant,
    what: &'static str,
    seen: Seen,
}

fn seen_of(state: FlagState) -> Seen {
    match state {
        FlagState::False => Seen::False,
        FlagState::True => Seen::True,
        FlagState::Error => Seen::Error,
    }
}

fn observe(
    id: u128,
    what: &'static str,
    start: Instant,
    r: Result<Option<FlagState>, CatalogError>,
) -> Option<Event> {
    let seen = match r {
        Ok(Some(s)) => seen_of(s),
        Ok(None) => Seen::Absent,
        Err(CatalogError::Unknown(_)) => Seen::Absent,
        Err(CatalogError::AlreadyFinal { state, .. }) => seen_of(state),
        Err(CatalogError::DeadlineMissed { .. }) => Seen::NeverTrue,
        // Unavailable: the call may or may not have taken effect, and says nothing.
        Err(_) => return None,
    };
    Some(Event {
        id,
        start,
        end: Instant::now(),
        what,
        seen,
    })
}

/// Checks one flag's events; returns the problems found.
fn check(id: u128, events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    let true_seen = events.iter().any(|e| e.seen == Seen::True);
    let error_seen = events
        .iter()
        .any(|e| matches!(e.seen, Seen::Error | Seen::NeverTrue));
    if true_seen && error_seen {
        problems.push(format!("flag {id} seen both TRUE and ERROR: {events:?}"));
    }
    for a in events {
        for b in events {
            // b started after a ended: b must not contradict what a saw.
            if b.start <= a.end {
                continue;
            }
            let bad = match a.seen {
                Seen::True => b.seen != Seen::True,
                Seen::Error | Seen::NeverTrue => !matches!(b.seen, Seen::Error | Seen::NeverTrue),
                Seen::False => b.seen == Seen::Absent,
                Seen::Absent => false,
            };
            if bad {
                problems.push(format!(
                    "flag {id}: {} saw {:?}, then a later {} saw {:?}",
                    a.what, a.seen, b.what, b.seen
                ));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_leader_crashes_is_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: 1,
            window_secs: 60,
            grace_secs: 60,
            dir: dir.path().to_path_buf(),
        },
        ClusterOptions {
            catalog: CatalogSpec {
                partitions: 2,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let history = Arc::new(Mutex::new(Vec::<Event>::new()));
    let run_until = Instant::now() + Duration::from_secs(12);
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let flags = cluster.catalog_client().unwrap();
        let history = history.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c);
            while Instant::now() < run_until {
                let id = rng.gen_range(0..40u128);
                let start = Instant::now();
                let event = match rng.gen_range(0..3) {
                    0 => {
                        let ttl_ms = rng.gen_range(100..1500);
                        let r = flags
                            .create(vec![CreateFlag {
                                id: gw(id),
                                ttl_ms,
                                robust: false,
                            }])
                            .await;
                        observe(id, "CREATE", start, r.map(|f| Some(f[0].state)))
                    }
                    1 => {
                        let r = flags.set(vec![gw(id)]).await;
                        observe(id, "SET", start, r.map(|f| Some(f[0].state)))
                    }
                    _ => {
                        let r = flags.get(vec![gw(id)]).await;
                        observe(id, "GET", start, r.map(|f| f[0].map(|f| f.state)))
                    }
                };
                if let Some(e) = event {
                    history.lock().unwrap().push(e);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
            }
        }));
    }
    // Crash leaders while the clients run: stop the leader of partition 0, restart it.
    let mut crashes = 0;
    while Instant::now() + Duration::from_secs(3) < run_until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(leader) = cluster.catalog_leader(0) {
            cluster.stop_catalog(leader).await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            cluster.restart_catalog(leader).await.unwrap();
            crashes += 1;
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(crashes >= 2, "only {crashes} crashes");
    // Every flag ends final once its deadline passed and the sweep ran.
    let flags = cluster.catalog_client().unwrap();
    let ids: Vec<BatchId> = (0..40u128).map(gw).collect();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let start = Instant::now();
        if let Ok(got) = flags.get(ids.clone()).await {
            if got
                .iter()
                .all(|f| f.is_none_or(|f| f.state != FlagState::False))
            {
                let mut h = history.lock().unwrap();
                for (i, f) in got.iter().enumerate() {
                    if let Some(e) = observe(i as u128, "final GET", start, Ok(f.map(|f| f.state)))
                    {
                        h.push(e);
                    }
                }
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "flags still FALSE long after their deadlines"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let mut by_flag: BTreeMap<u128, Vec<Event>> = BTreeMap::new();
    for e in history.iter() {
        by_flag.entry(e.id).or_default().push(e.clone());
    }
    let problems: Vec<String> = by_flag.iter().flat_map(|(id, ev)| check(*id, ev)).collect();
    assert!(
        problems.is_empty(),
        "{} violations:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let finals = by_flag
        .values()
        .filter(|ev| ev.iter().any(|e| e.seen == Seen::True))
        .count();
    assert!(history.len() > 200, "only {} answered calls", history.len());
    assert!(finals > 0, "no flag ever committed");
    cluster.shutdown().await;
}

#[test]
fn the_checker_catches_a_flag_seen_true_then_false() {
    let t = Instant::now();
    let ev = |ms: u64, seen| Event {
        id: 1,
        start: t + Duration::from_millis(ms),
        end: t + Duration::from_millis(ms + 5),
        what: "GET",
        seen,
    };
    assert!(check(
        1,
        &[ev(0, Seen::False), ev(10, Seen::True), ev(20, Seen::True)]
    )
    .is_empty());
    assert!(!check(1, &[ev(0, Seen::True), ev(10, Seen::False)]).is_empty());
    assert!(!check(1, &[ev(0, Seen::True), ev(10, Seen::Error)]).is_empty());
    assert!(!check(1, &[ev(0, Seen::NeverTrue), ev(10, Seen::True)]).is_empty());
    // Overlapping calls may be ordered either way.
    let overlapping = Event {
        end: t + Duration::from_millis(30),
        ..ev(0, Seen::False)
    };
    assert!(check(1, &[overlapping, ev(10, Seen::True)]).is_empty());
}
