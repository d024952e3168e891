//! Collectors killed: (1) one SIGKILLed at random moments and restarted each time, with
//! explicit and with cumulative acks; (5) several sharing the consumer, one SIGKILLed and,
//! with three, another frozen past the ack wait.

use super::collector::Collector;
use super::publisher::plan;
use super::rig::Rig;
use super::{seed, soak};
use std::time::{Duration, Instant};

/// (1) The collector SIGKILLed at random moments, restarted each time, while messages are
/// published; then a final run finishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_at_random_moments() {
    let (messages, kills) = if soak() { (100_000, 30) } else { (20_000, 10) };
    killed_at_random_moments("kill", "explicit", messages, kills).await;
}

/// (1b) The same with cumulative acks (`ack_policy: all`): every restart finds the killed
/// run's deliveries pending and must not ack past them before they are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_at_random_moments_acking_cumulatively() {
    let (messages, kills) = if soak() { (60_000, 20) } else { (12_000, 6) };
    killed_at_random_moments("kill_all", "all", messages, kills).await;
}

async fn killed_at_random_moments(name: &'static str, ack_policy: &str, messages: u64, kills: u64) {
    let (_nats, mut rig) = Rig::on_one_server(name, ack_policy).await;
    // Publishing lasts about as long as the kills do.
    let rate = messages as f64 / (kills as f64 * 0.8);
    let publisher = rig.spawn_publisher(plan(messages, 50, rate, 1));
    let mut rng = fastrand::Rng::with_seed(seed(101));
    let started = Instant::now();
    for k in 0..kills {
        let at_spawn = rig.stored_count().await.max(0);
        let mut collector = rig.collector(&format!("run{k:02}"), None);
        // Even kills land anywhere, startup and schema migration included; odd ones once
        // this run has committed something, in the middle of its writes.
        let how = if k % 2 == 0 {
            let after = Duration::from_millis(rng.u64(100..=900));
            tokio::time::sleep(after).await;
            format!("{after:?} after start")
        } else {
            let since = Instant::now();
            let cap = Duration::from_secs(10);
            while rig.stored_count().await <= at_spawn && since.elapsed() < cap {
                collector.assert_running("before it was killed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let extra = Duration::from_millis(rng.u64(0..=400));
            tokio::time::sleep(extra).await;
            if since.elapsed() >= cap {
                format!("after {cap:?} without a commit (nothing left to do?)")
            } else {
                format!("{extra:?} after its first commit")
            }
        };
        collector.sigkill().await;
        eprintln!(
            "[{name}] kill {}/{kills}, {how}: {} rows stored so far",
            k + 1,
            rig.stored_count().await
        );
    }
    eprintln!(
        "[{name}] {kills} kills in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // No collector left running: the final run drains what is left.
    rig.finish(publisher, &mut []).await;
}

/// (5) Several collectors on one durable consumer, started together (their schema migrations
/// race), one SIGKILLed mid-ingest: the others take over its unacknowledged deliveries. With
/// three, another one is then frozen (SIGSTOP) for longer than the ack wait and resumed.
async fn shared_consumer(collectors: usize, scenario: u64) {
    let messages = if soak() { 60_000 } else { 12_000 };
    let name = if collectors == 2 {
        "shared2"
    } else {
        "shared3"
    };
    let (_nats, mut rig) = Rig::on_one_server(name, "explicit").await;
    let mut running: Vec<Collector> = (0..collectors)
        .map(|i| rig.collector(&format!("collector{i}"), None))
        .collect();
    let publisher = rig.spawn_publisher(plan(messages, 40, 3_000.0, scenario));
    let mut rng = fastrand::Rng::with_seed(seed(100 + scenario));
    rig.wait_rows(3 * messages as i64 / 4, &mut running).await;
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=400))).await;
    let victim = rng.usize(..collectors);
    let before = rig.stored_count().await;
    running[victim].sigkill().await;
    let victim = running.remove(victim);
    eprintln!("[{name}] killed {} at {before} rows", victim.label);
    if collectors >= 3 {
        // A collector frozen past the ack wait (a long GC-like stall, a stopped VM): its
        // deliveries go to the others meanwhile, and when it wakes up it still holds them,
        // possibly in the middle of a transaction. Whatever it commits late must not double.
        let frozen = rng.usize(..running.len());
        let pause = rig.settings.consumer.ack_wait + Duration::from_secs(2);
        let at = rig.stored_count().await;
        running[frozen].signal(libc::SIGSTOP);
        tokio::time::sleep(pause).await;
        running[frozen].signal(libc::SIGCONT);
        eprintln!(
            "[{name}] froze {} for {pause:?} (SIGSTOP at {at} rows, SIGCONT at {} rows)",
            running[frozen].label,
            rig.stored_count().await
        );
    }
    rig.finish(publisher, &mut running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_one_killed() {
    shared_consumer(2, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_one_killed_one_frozen() {
    shared_consumer(3, 6).await;
}
