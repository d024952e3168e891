//! Random identifiers as lowercase hex: 128-bit trace ids, 64-bit span ids, 128-bit message
//! ids. None is ever all zeros (OTLP treats an all-zero id as absent).
//!
//! The generator is `fastrand`'s per-thread one: fast and collision-resistant enough for
//! ids, not for secrets.

/// A new 128-bit trace id: 32 lowercase hex digits.
///
/// # Examples
///
/// ```
/// let id = jetscale_sdk::ids::trace_id();
/// assert_eq!(id.len(), 32);
/// assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
/// assert_ne!(id, jetscale_sdk::ids::trace_id());
/// ```
pub fn trace_id() -> String {
    format!("{:032x}", nonzero_u128())
}

/// A new 64-bit span id: 16 lowercase hex digits.
///
/// # Examples
///
/// ```
/// let id = jetscale_sdk::ids::span_id();
/// assert_eq!(id.len(), 16);
/// assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
/// ```
pub fn span_id() -> String {
    let id = loop {
        let v = fastrand::u64(..);
        if v != 0 {
            break v;
        }
    };
    format!("{id:016x}")
}

/// A new 128-bit `Nats-Msg-Id` for a metric or log record: 32 lowercase hex digits.
///
/// Generated once per message and kept across retries, so the stream's duplicate window
/// drops the copies a retry produces.
///
/// # Examples
///
/// ```
/// assert_eq!(jetscale_sdk::ids::msg_id().len(), 32);
/// ```
pub fn msg_id() -> String {
    format!("{:032x}", nonzero_u128())
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_fixed_width_lowercase_hex_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let (t, s, m) = (trace_id(), span_id(), msg_id());
            assert_eq!((t.len(), s.len(), m.len()), (32, 16, 32));
            for id in [&t, &s, &m] {
                assert!(id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                assert!(id.bytes().any(|b| b != b'0'));
            }
            assert!(seen.insert(t));
            assert!(seen.insert(m));
        }
    }
}
