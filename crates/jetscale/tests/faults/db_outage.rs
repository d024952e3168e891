//! (2) PostgreSQL stopped in immediate mode mid-ingest and started again.

use super::publisher::{plan, BIG_PAYLOADS};
use super::rig::Rig;
use super::{seed, soak};
use crate::support;
use jetscale::dev::PostgresCluster;
use std::time::Duration;

/// Immediate stop of a private PostgreSQL cluster (it blocks: off the async worker).
fn kill_postgres(pg: &mut PostgresCluster) {
    tokio::task::block_in_place(|| pg.kill());
}

/// (2) PostgreSQL stopped in immediate mode (no checkpoint: crash recovery on restart) while
/// the collector writes, and started again; the same collector process carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_immediately_and_restarted() {
    let (messages, outages) = if soak() { (60_000, 5) } else { (12_000, 2) };
    let nats = support::nats_with(BIG_PAYLOADS).await;
    // A cluster of its own, not the shared one: this test stops it.
    let (_pg_dir, mut pg) = support::own_postgres().await;
    let db = pg.create_database("faults_pg").await.expect("database");
    let mut rig = Rig::new("postgres", nats.server.url(), db, 1).await;
    let mut running = vec![rig.collector("collector", None)];
    let publisher = rig.spawn_publisher(plan(messages, 40, 2_000.0, 2));
    let mut rng = fastrand::Rng::with_seed(seed(102));
    let total_rows = 3 * messages as i64;
    for n in 0..outages {
        let at = total_rows * (15 + 60 * n as i64 / outages as i64) / 100;
        let before = rig.wait_rows(at, &mut running).await;
        kill_postgres(&mut pg);
        let down = Duration::from_millis(rng.u64(1000..=3000));
        tokio::time::sleep(down).await;
        running[0].assert_running("while PostgreSQL was down");
        pg.start_again().await.expect("PostgreSQL starts again");
        eprintln!(
            "[postgres] outage {}/{outages}: stopped (immediate) at {before} rows, down {down:?}",
            n + 1
        );
    }
    rig.finish(publisher, &mut running).await;
    drop(pg);
}
