//! Devices ride through a failover: with default settings, every reading handed to the SDK's
//! publisher and every message `simulate` sends is in the database exactly once, through a
//! stream leader SIGKILLed mid-publish on a three-node cluster (and restarted 3 s later), and
//! through the publisher's connection cut for a few seconds.
//!
//! The publishers run with their defaults (a 30 s retry budget); the collector runs after the
//! fault, so what is checked is the publishing side: what reached the stream, once each.

use crate::support;
use jetscale::simulate::{self, Report, SentPoint, SimulateOptions};
use jetscale_sdk::{DeviceReading, Publisher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Readings per device, and the time between two of a device's readings.
const COUNT: u64 = 20;
const INTERVAL: Duration = Duration::from_millis(100);

/// A fleet of `devices` publishing through `js` with the simulator's defaults (retry budget
/// included), recording every point it reports stored.
fn spawn_simulate(
    js: async_nats::jetstream::Context,
    devices: u32,
) -> JoinHandle<Result<Report, simulate::SimulateError>> {
    let options = SimulateOptions {
        devices,
        count: Some(COUNT),
        interval: INTERVAL,
        record_sent: true,
        ..SimulateOptions::default()
    };
    tokio::spawn(async move { simulate::run(js, &options, |_| {}).await })
}

/// `devices` devices built on the SDK with its default options, each publishing `COUNT`
/// readings one after the other, `INTERVAL` apart, as a device does. Returns the points of
/// every reading the SDK acknowledged, as a report; a reading it gave up on fails the test.
fn spawn_sdk_devices(publisher: Publisher, devices: u32) -> JoinHandle<Report> {
    tokio::spawn(async move {
        let mut fleet = JoinSet::new();
        for d in 0..devices {
            let publisher = publisher.clone();
            fleet.spawn(async move {
                let id = format!("sdk-device-{d:03}");
                let mut sent = Vec::new();
                for i in 0..COUNT {
                    let reading = DeviceReading::new(&id, 20.0 + i as f64 / 7.0, 40.5, 99.0);
                    if let Err(err) = publisher.publish_device_reading(&reading).await {
                        panic!("{id} lost reading {i}: {err}");
                    }
                    for (metric, value) in [
                        ("device.temperature", reading.temperature),
                        ("device.humidity", reading.humidity),
                        ("device.battery", reading.battery),
                    ] {
                        sent.push(SentPoint {
                            device_id: id.clone(),
                            location: reading.location.clone(),
                            metric,
                            time_unix_nano: reading.time_unix_nano as i64,
                            value,
                        });
                    }
                    tokio::time::sleep(INTERVAL).await;
                }
                sent
            });
        }
        let mut report = Report::default();
        while let Some(sent) = fleet.join_next().await {
            report
                .sent
                .extend(sent.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
        }
        report.acked = report.sent.len() as u64 / 3;
        report
    })
}

/// Waits until the stream holds at least `messages`, so the fault lands mid-publish.
async fn wait_for_messages(js: &async_nats::jetstream::Context, stream: &str, messages: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if stored >= messages {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of {messages} messages reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for both publishers, runs the collector until idle and checks that the database
/// holds exactly what the publishers report stored, and that this is everything they sent.
async fn collect_and_check(
    settings: &jetscale::config::Settings,
    db_url: &str,
    sim: JoinHandle<Result<Report, simulate::SimulateError>>,
    sdk: JoinHandle<Report>,
    devices: u32,
    sdk_devices: u32,
) {
    let simulated = sim.await.expect("simulate task").expect("simulate run");
    assert_eq!(
        (simulated.acked, simulated.errors),
        (u64::from(devices) * COUNT, 0),
        "simulate kept every message"
    );
    let sdk = sdk.await.expect("SDK devices");
    assert_eq!(sdk.acked, u64::from(sdk_devices) * COUNT);
    support::collect_until_idle(settings).await;
    let db = support::db(db_url).await;
    let points = support::assert_stored_as_sent(&db, &[&simulated, &sdk]).await;
    assert_eq!(
        points as u64,
        3 * (u64::from(devices + sdk_devices)) * COUNT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_a_stream_leader_killed_mid_publish() {
    let dir = support::temp_dir();
    let mut nodes = jetscale::dev::start_cluster(dir.path(), 3)
        .await
        .expect("a three-node nats cluster");
    let urls = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let db = support::fresh_database("failover_leader").await;
    let mut settings = support::settings(&urls, &db);
    settings.stream.replicas = 3;
    support::provision_stream(&settings).await;
    let client = jetscale::receivers::nats::connect(&settings.nats, "failover-check")
        .await
        .expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);

    let (devices, sdk_devices) = (300, 50);
    let sim = spawn_simulate(js.clone(), devices);
    let publisher = Publisher::connect(&urls).await.expect("SDK connects");
    let sdk = spawn_sdk_devices(publisher, sdk_devices);

    wait_for_messages(&js, &settings.stream.name, 600).await;
    let info = js
        .get_stream(&settings.stream.name)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let index = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n1..n3")
        - 1;
    nodes[index].kill();
    eprintln!(
        "[failover] SIGKILLed the stream leader {leader} at {} messages",
        info.state.messages
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[index].start_again().await.expect("node starts again");
    nodes[index]
        .wait_for_meta_leader(Duration::from_secs(30))
        .await
        .expect("the node rejoins");

    collect_and_check(&settings, &db, sim, sdk, devices, sdk_devices).await;
    drop(nodes);
}

/// A TCP relay between the publishers and nats-server whose connections can be cut: while
/// cut, it drops every open connection and closes new ones at once.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut links = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {
                        if flag.load(Ordering::SeqCst) {
                            links.abort_all();
                        }
                        continue;
                    }
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    links.abort_all();
                    continue; // dropping `inbound` closes it
                }
                links.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, cut, task }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_the_publishers_connection_cut_for_seconds() {
    let nats = support::nats().await;
    let db = support::fresh_database("failover_cut").await;
    let settings = support::settings(&nats.server.url(), &db);
    support::provision_stream(&settings).await;
    let relay = Relay::start(nats.server.port()).await;
    let direct = support::jetstream(&nats.server.url()).await;

    let (devices, sdk_devices) = (300, 50);
    let sim = spawn_simulate(support::jetstream(&relay.url()).await, devices);
    let publisher = Publisher::connect(&relay.url())
        .await
        .expect("SDK connects");
    let sdk = spawn_sdk_devices(publisher, sdk_devices);

    wait_for_messages(&direct, &settings.stream.name, 600).await;
    relay.set_cut(true);
    eprintln!("[failover] cut the publishers' connections");
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.set_cut(false);
    eprintln!("[failover] connections allowed again");

    collect_and_check(&settings, &db, sim, sdk, devices, sdk_devices).await;
    drop(relay);
    drop(nats);
}
