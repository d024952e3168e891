//! Creates the stream and the durable consumer, or checks them: running setup twice
//! changes nothing and says so; a stream with other settings is reported setting by setting
//! and updated where NATS allows it.

use super::StreamError;
use crate::config::units::format_duration;
use crate::config::{AckPolicy, ConsumerSettings, StreamSettings};
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

/// One setting that differs between what exists and what is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub setting: &'static str,
    pub found: String,
    pub wanted: String,
    /// Whether NATS lets the setting change on an existing stream or consumer.
    pub updatable: bool,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.setting, self.found, self.wanted)?;
        if !self.updatable {
            f.write_str(" (NATS can not change this on an existing stream: recreate it, which loses its messages)")?;
        }
        Ok(())
    }
}

/// What provisioning did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    Unchanged,
    Updated(Vec<Drift>),
    /// Differences that could not be applied.
    Drifted(Vec<Drift>),
}

/// A warning when the stream's duplicate window is shorter than the publishers' default retry
/// budget ([`jetscale_sdk::DEFAULT_RETRY_BUDGET`]): a device retrying through a leader election
/// could then store a reading twice. Warned about, not refused: the NATS-native service
/// design's 5 s window is a documented choice that must keep working, and only the publishers
/// know their budget (`jetscale simulate` refuses to run with a budget longer than the window
/// it finds; SDK users check theirs with [`jetscale_sdk::RetryPolicy::check_duplicate_window`]).
pub fn duplicate_window_advice(s: &StreamSettings) -> Option<String> {
    let budget = jetscale_sdk::DEFAULT_RETRY_BUDGET;
    (s.duplicate_window < budget).then(|| {
        format!(
            "stream {}: duplicate_window {} is shorter than the publishers' default retry budget \
             ({}): a device retrying through a leader election or a lost connection could store \
             a reading twice, and `jetscale simulate` refuses to run on it; raise \
             duplicate_window to at least {} (the default is 2m), or give every publisher a \
             retry budget within {}",
            s.name,
            format_duration(s.duplicate_window),
            format_duration(budget),
            format_duration(budget),
            format_duration(s.duplicate_window),
        )
    })
}

fn stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        retention: match s.retention.as_str() {
            "interest" => stream::RetentionPolicy::Interest,
            "workqueue" => stream::RetentionPolicy::WorkQueue,
            _ => stream::RetentionPolicy::Limits,
        },
        max_age: s.max_age,
        max_bytes: s.max_bytes,
        storage: if s.storage == "memory" {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        num_replicas: s.replicas,
        discard: if s.discard == "new" {
            stream::DiscardPolicy::New
        } else {
            stream::DiscardPolicy::Old
        },
        duplicate_window: s.duplicate_window,
        ..Default::default()
    }
}

fn drifts(found: &stream::Config, wanted: &stream::Config) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut check = |setting: &'static str, f: String, w: String, updatable: bool| {
        if f != w {
            out.push(Drift {
                setting,
                found: f,
                wanted: w,
                updatable,
            });
        }
    };
    check(
        "subjects",
        found.subjects.join(","),
        wanted.subjects.join(","),
        true,
    );
    check(
        "retention",
        format!("{:?}", found.retention),
        format!("{:?}", wanted.retention),
        false,
    );
    check(
        "max_age",
        format_duration(found.max_age),
        format_duration(wanted.max_age),
        true,
    );
    check(
        "max_bytes",
        found.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
        true,
    );
    check(
        "storage",
        format!("{:?}", found.storage),
        format!("{:?}", wanted.storage),
        false,
    );
    check(
        "replicas",
        found.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
        true,
    );
    check(
        "discard",
        format!("{:?}", found.discard),
        format!("{:?}", wanted.discard),
        true,
    );
    check(
        "duplicate_window",
        format_duration(found.duplicate_window),
        format_duration(wanted.duplicate_window),
        true,
    );
    out
}

/// Creates the stream, or reports and applies the differences NATS allows.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(Provisioned, stream::Stream), StreamError> {
    if let Some(advice) = duplicate_window_advice(settings) {
        tracing::warn!("{advice}");
    }
    let wanted = stream_config(settings);
    let err = |step: &'static str| move |e: String| StreamError::JetStream { step, detail: e };
    match js.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let found = existing
                .info()
                .await
                .map_err(|e| err("stream info")(e.to_string()))?
                .config
                .clone();
            let differences = drifts(&found, &wanted);
            if differences.is_empty() {
                return Ok((Provisioned::Unchanged, existing));
            }
            if differences.iter().any(|d| !d.updatable) {
                return Ok((Provisioned::Drifted(differences), existing));
            }
            let mut update = found.clone();
            update.subjects = wanted.subjects.clone();
            update.max_age = wanted.max_age;
            update.max_bytes = wanted.max_bytes;
            update.num_replicas = wanted.num_replicas;
            update.discard = wanted.discard;
            update.duplicate_window = wanted.duplicate_window;
            js.update_stream(&update)
                .await
                .map_err(|e| StreamError::Incompatible {
                    stream: settings.name.clone(),
                    detail: format!("NATS refused the update ({e}); differences: {}", list(&differences)),
                })?;
            let stream = js
                .get_stream(&settings.name)
                .await
                .map_err(|e| err("get stream")(e.to_string()))?;
            Ok((Provisioned::Updated(differences), stream))
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let stream = js.create_stream(wanted).await.map_err(|e| {
                let text = e.to_string();
                let hint = if text.contains("overlap") {
                    " (another stream already listens on these subjects: `nats stream ls`)"
                } else if text.contains("replicas") || text.contains("insufficient resources") {
                    " (replicas above 1 need a NATS cluster with that many JetStream servers)"
                } else {
                    ""
                };
                StreamError::JetStream {
                    step: "create stream",
                    detail: format!("{text}{hint}"),
                }
            })?;
            Ok((Provisioned::Created, stream))
        }
        Err(e) => Err(StreamError::JetStream {
            step: "look up stream",
            detail: format!("{e} (is JetStream enabled on the server, and may this user use the JetStream API?)"),
        }),
    }
}

fn list(d: &[Drift]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The durable pull consumer's configuration: acks as configured, everything from the start.
///
/// A filter that is the stream's only subject selects every message anyway and is left out:
/// nats-server before 2.10 counts a filtered consumer's pending messages by scanning the
/// stream, so with 10 million messages stored, creating the consumer took 7 s and every
/// consumer info 5 s of a core (the collector asks for the ack floor regularly), against
/// 1 ms unfiltered.
pub fn consumer_config(c: &ConsumerSettings, stream_subjects: &[String]) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: c.durable.then(|| c.name.clone()),
        name: Some(c.name.clone()),
        filter_subject: effective_filter(&c.filter_subject, stream_subjects),
        ack_policy: match c.ack_policy {
            AckPolicy::Explicit => consumer::AckPolicy::Explicit,
            AckPolicy::All => consumer::AckPolicy::All,
        },
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: c.ack_wait,
        max_ack_pending: c.max_ack_pending,
        max_deliver: c.max_deliver,
        max_batch: 0,
        inactive_threshold: if c.durable {
            Duration::ZERO
        } else {
            Duration::from_secs(300)
        },
        ..Default::default()
    }
}

/// The filter a consumer needs on a stream with these subjects: none when it would select
/// everything.
fn effective_filter(filter: &str, stream_subjects: &[String]) -> String {
    if matches!(stream_subjects, [only] if only == filter) {
        String::new()
    } else {
        filter.to_owned()
    }
}

/// Creates the consumer, or reports and updates its differences.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    settings: &ConsumerSettings,
) -> Result<(Provisioned, consumer::Consumer<consumer::pull::Config>), StreamError> {
    let stream_subjects = &stream.cached_info().config.subjects;
    let wanted = consumer_config(settings, stream_subjects);
    match stream
        .get_consumer::<consumer::pull::Config>(&settings.name)
        .await
    {
        Ok(mut existing) => {
            let found = existing
                .info()
                .await
                .map_err(|e| StreamError::JetStream {
                    step: "consumer info",
                    detail: e.to_string(),
                })?
                .config
                .clone();
            if found.ack_policy != wanted.ack_policy {
                // Acking by the wrong policy is not a drift to live with: explicit acks on an
                // `all` consumer would each acknowledge every earlier delivery, committed or not.
                return Err(StreamError::Incompatible {
                    stream: stream.cached_info().config.name.clone(),
                    detail: format!(
                        "consumer `{}` has ack policy {:?} but the configuration asks for {:?}, and JetStream cannot change a consumer's ack policy: set receivers.nats.jetstream.ack_policy to match, or name a new consumer (receivers.nats.jetstream.consumer) and delete this one once it has nothing pending",
                        settings.name, found.ack_policy, wanted.ack_policy
                    ),
                });
            }
            let mut differences = Vec::new();
            let mut check = |setting: &'static str, f: String, w: String, updatable: bool| {
                if f != w {
                    differences.push(Drift {
                        setting,
                        found: f,
                        wanted: w,
                        updatable,
                    });
                }
            };
            // A consumer created filtered on the stream's only subject (before this was
            // left out) selects the same messages: not a difference.
            check(
                "filter_subject",
                effective_filter(&found.filter_subject, &stream.cached_info().config.subjects),
                wanted.filter_subject.clone(),
                true,
            );
            check(
                "ack_wait",
                format_duration(found.ack_wait),
                format_duration(wanted.ack_wait),
                true,
            );
            check(
                "max_ack_pending",
                found.max_ack_pending.to_string(),
                wanted.max_ack_pending.to_string(),
                true,
            );
            check(
                "max_deliver",
                found.max_deliver.to_string(),
                wanted.max_deliver.to_string(),
                true,
            );
            if differences.is_empty() {
                return Ok((Provisioned::Unchanged, existing));
            }
            if differences.iter().any(|d| !d.updatable) {
                return Ok((Provisioned::Drifted(differences), existing));
            }
            let mut update = wanted.clone();
            update.deliver_policy = found.deliver_policy;
            if effective_filter(&found.filter_subject, stream_subjects) == update.filter_subject {
                // Equivalent: keep it as it is (nats-server 2.9 refuses to change a filter).
                update.filter_subject = found.filter_subject.clone();
            }
            let consumer =
                stream
                    .create_consumer(update)
                    .await
                    .map_err(|e| StreamError::JetStream {
                        step: "update consumer",
                        detail: format!("{e}; differences: {}", list(&differences)),
                    })?;
            Ok((Provisioned::Updated(differences), consumer))
        }
        Err(_) => {
            let consumer = create_consumer_patiently(stream, wanted, &settings.name)
                .await
                .map_err(|detail| StreamError::JetStream {
                    step: "create consumer",
                    detail,
                })?;
            Ok((Provisioned::Created, consumer))
        }
    }
}

/// How long a consumer creation that timed out is waited for.
const CREATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// nats-server answers a consumer creation once it has counted the consumer's pending
/// messages. With a filter on a deep backlog (nats-server 2.9 scans the stream: 7 s for 10
/// million messages) that outlasts the client's 5 s request timeout while the creation goes
/// through, so a timeout is followed by looking for the consumer. The request timeout itself
/// stays short: a collector without permission to receive replies should fail fast.
async fn create_consumer_patiently(
    stream: &stream::Stream,
    config: consumer::pull::Config,
    name: &str,
) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        Err(e) if e.kind() == stream::ConsumerErrorKind::TimedOut => {
            tracing::info!(
                consumer = name,
                "creating the consumer takes a while (a deep backlog); waiting for it"
            );
            let deadline = std::time::Instant::now() + CREATE_PATIENCE;
            loop {
                if let Ok(consumer) = stream.get_consumer(name).await {
                    return Ok(consumer);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "{e}, and the consumer did not appear within {CREATE_PATIENCE:?}"
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_filter_selecting_the_whole_stream_is_left_out() {
        let subjects = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::effective_filter("telemetry.>", &subjects(&["telemetry.>"])),
            ""
        );
        assert_eq!(
            super::effective_filter("telemetry.>", &subjects(&["telemetry.>", "logs.>"])),
            "telemetry.>"
        );
        assert_eq!(
            super::effective_filter("telemetry.metrics.>", &subjects(&["telemetry.>"])),
            "telemetry.metrics.>"
        );
        assert_eq!(super::effective_filter("", &subjects(&["telemetry.>"])), "");
    }

    use super::*;

    #[test]
    fn drift_is_reported_setting_by_setting() {
        let iot_pipeline = StreamSettings {
            name: "TELEMETRY".into(),
            subjects: vec!["telemetry.>".into()],
            retention: "limits".into(),
            max_age: Duration::from_secs(48 * 3600),
            max_bytes: 50_000_000_000,
            storage: "file".into(),
            replicas: 1,
            discard: "old".into(),
            duplicate_window: Duration::from_secs(120),
        };
        let service_design = StreamSettings {
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 1_000_000_000,
            duplicate_window: Duration::from_secs(5),
            ..iot_pipeline.clone()
        };
        let d = drifts(
            &stream_config(&iot_pipeline),
            &stream_config(&service_design),
        );
        let names: Vec<_> = d.iter().map(|d| d.setting).collect();
        assert_eq!(names, vec!["max_age", "max_bytes", "duplicate_window"]);
        assert!(d.iter().all(|d| d.updatable));
        assert_eq!(d[0].to_string(), "max_age: 2d -> 7d");

        // The IoT design's 2-minute window covers the publishers' retry budget; the service
        // design's 5 s does not, and setup says so.
        assert_eq!(duplicate_window_advice(&iot_pipeline), None);
        let advice = duplicate_window_advice(&service_design).expect("a warning");
        assert!(
            advice.contains("duplicate_window 5s is shorter"),
            "{advice}"
        );
        assert!(advice.contains("at least 30s"), "{advice}");
    }
}
