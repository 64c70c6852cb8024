//! Head sampling at the export boundary.
//!
//! A span whose trace arrived with propagated context (a `traceparent` the traced program
//! received or sent) follows that context's decision: flag bit 0 set is kept, clear is dropped,
//! whatever the ratio. A trace the agent started itself (span assembly gives these the sampled
//! flag too; they are told apart by [`SpanRecord::tracestate`] being `None`) is kept when a
//! hash of its trace id falls under the ratio, so every span of one trace gets the same
//! decision, in this agent and in any other agent with the same ratio.
//!
//! The decision is a pure function of the span: [`Sampler::keep`].

use crate::span::SpanRecord;

/// Keeps a fraction of context-less traces; honours propagated decisions.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Trace ids whose hash is below this are kept; `u64::MAX` with `all` means every trace.
    threshold: u64,
    all: bool,
}

impl Sampler {
    /// `ratio` is clamped to [0, 1].
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self {
            threshold: (ratio * u64::MAX as f64) as u64,
            all: ratio >= 1.0,
        }
    }

    /// Whether `span` is exported.
    pub fn keep(&self, span: &SpanRecord) -> bool {
        if span.tracestate.is_some() {
            return span.flags & 1 == 1;
        }
        self.keep_trace(&span.trace_id)
    }

    /// The ratio decision for a trace id (consistent for every span of the trace).
    pub fn keep_trace(&self, trace_id: &[u8; 16]) -> bool {
        if self.all {
            return true;
        }
        // The W3C random bits are the low 56 bits of the id (trace-id ratio samplers in the
        // OpenTelemetry SDKs compare those too); mix them so a non-random id still spreads.
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        let high = u64::from_be_bytes(trace_id[..8].try_into().expect("8 bytes"));
        mix(low ^ high.rotate_left(29)) < self.threshold
    }
}

/// SplitMix64 finaliser: a fixed, well-spread 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{ProcessResource, SpanKind, SpanStatus};
    use std::sync::Arc;

    fn span(trace: u128, flags: u8) -> SpanRecord {
        own(trace, flags)
    }

    fn remote(trace: u128, flags: u8) -> SpanRecord {
        SpanRecord {
            tracestate: Some(String::new()),
            ..own(trace, flags)
        }
    }

    fn own(trace: u128, flags: u8) -> SpanRecord {
        SpanRecord {
            trace_id: trace.to_be_bytes(),
            span_id: [1; 8],
            parent_span_id: None,
            tracestate: None,
            flags,
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes: vec![],
            status: SpanStatus::Unset,
            links: vec![],
            resource: Arc::new(ProcessResource {
                pid: 1,
                service_name: "s".into(),
                attributes: vec![],
            }),
        }
    }

    #[test]
    fn propagated_decision_wins_over_ratio() {
        for ratio in [0.0, 0.5, 1.0] {
            let s = Sampler::new(ratio);
            assert!(
                s.keep(&remote(7, 1)),
                "sampled context kept at ratio {ratio}"
            );
            assert!(
                !s.keep(&remote(7, 0)),
                "unsampled context dropped at ratio {ratio}"
            );
        }
    }

    #[test]
    fn ratio_edges_and_proportion() {
        let none = Sampler::new(0.0);
        let all = Sampler::new(1.0);
        let quarter = Sampler::new(0.25);
        let mut kept = 0;
        let mut rng = 0x1234_5678_9abc_def0_u128;
        for _ in 0..20_000 {
            rng = rng
                .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                .wrapping_add(0x5851_f42d_4c95_7f2d);
            let s = span(rng, 1);
            assert!(!none.keep(&s));
            assert!(all.keep(&s));
            kept += usize::from(quarter.keep(&s));
        }
        assert!(
            (4_500..5_500).contains(&kept),
            "about a quarter kept: {kept}"
        );
    }

    #[test]
    fn decision_is_per_trace() {
        let s = Sampler::new(0.5);
        for t in 0..1000u128 {
            let trace = t.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
            let mut a = span(trace, 1);
            a.span_id = [2; 8];
            let b = span(trace, 1);
            assert_eq!(s.keep(&a), s.keep(&b));
        }
        assert!(Sampler::new(f64::NAN).keep(&span(3, 0)));
    }
}
