//! EC2 and IMDS calls as metrics: every call's latency, outcome and error code, recorded in [`Metrics`].
//!
//! [`Meter`] is an [`Ec2Layer`]: wrapped around a backend (`MeteredEc2`), it records each call as EC2 answered
//! it (the pacer sits above, so its retries are separate calls here, as they are for EC2). Series written:
//! `awscni_aws_api_latency_ms` (summary by API, error, status), `awscni_ec2api_req_count` and
//! `awscni_ec2api_error_count`, `awscni_aws_api_error_count` by code, `awscni_ipamd_action_inprogress`, and
//! ours, `awscni_ec2_calls` by API and outcome (ok, throttled, error). IMDS reads are timed under
//! api=`GetMetadata`, as the anchor does. Time comes from the [`Clock`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ec2_api::clock::Clock;
use ec2_api::layer::{Attempt, Call};
use ec2_api::{Api, Ec2Error, Ec2Layer, Imds, ImdsEni, ImdsError, Layered, NodeMetadata};

use crate::metrics::Metrics;

/// An [`ec2_api::Ec2`] whose every call is recorded (see the module docs).
pub type MeteredEc2 = Layered<Meter>;

/// The metrics layer (see the module docs).
pub struct Meter {
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Meter {
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Meter {
        Meter { metrics, clock }
    }

    /// One finished call of `api`: its latency, and the error code and whether it was throttling, if it failed.
    fn record(&self, api: &'static str, elapsed: Duration, err: Option<&str>, throttled: bool) {
        let m = &self.metrics;
        let ms = elapsed.as_secs_f64() * 1000.0;
        let (error, status) = match err {
            None => ("false", "200"),
            Some(_) if throttled => ("true", "503"),
            Some(_) => ("true", "400"),
        };
        m.aws_api_latency_ms.observe(&[api, error, status], ms);
        let outcome = match (err, throttled) {
            (None, _) => "ok",
            (Some(_), true) => "throttled",
            (Some(_), false) => "error",
        };
        m.ec2_calls.with_label_values(&[api, outcome]).inc();
        if let Some(code) = err {
            m.aws_api_error_count.with_label_values(&[api, code]).inc();
        }
    }

    async fn metered<T>(&self, api: Api, call: Call<'_, T>) -> Result<T, Ec2Error> {
        let name = api.name();
        let m = &self.metrics;
        m.ec2api_req_count.with_label_values(&[name]).inc();
        m.ipamd_action_inprogress.with_label_values(&[name]).inc();
        let started = self.clock.now();
        let res = call().await;
        let elapsed = self.clock.now().saturating_sub(started);
        m.ipamd_action_inprogress.with_label_values(&[name]).dec();
        match &res {
            Ok(_) => self.record(name, elapsed, None, false),
            Err(e) => {
                m.ec2api_error_count.with_label_values(&[name]).inc();
                let throttled = matches!(e, Ec2Error::Throttled { .. });
                self.record(name, elapsed, Some(e.code()), throttled);
            }
        }
        res
    }
}

impl Ec2Layer for Meter {
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        Box::pin(self.metered(api, call))
    }
}

/// An [`Imds`] that times every read under api=`GetMetadata`, as the anchor does.
pub struct MeteredImds {
    inner: Arc<dyn Imds>,
    meter: Meter,
}

impl MeteredImds {
    pub fn new(inner: Arc<dyn Imds>, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> MeteredImds {
        MeteredImds {
            inner,
            meter: Meter::new(metrics, clock),
        }
    }

    async fn timed<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, ImdsError>>,
    ) -> Result<T, ImdsError> {
        let started = self.meter.clock.now();
        let res = read.await;
        let elapsed = self.meter.clock.now().saturating_sub(started);
        let err = res.as_ref().err().map(|_| "GetMetadataError");
        self.meter.record("GetMetadata", elapsed, err, false);
        if err.is_some() {
            self.meter
                .metrics
                .aws_utils_error_count
                .with_label_values(&["GetMetadata", "GetMetadataError"])
                .inc();
        }
        res
    }
}

#[async_trait]
impl Imds for MeteredImds {
    async fn node(&self) -> Result<NodeMetadata, ImdsError> {
        self.timed(self.inner.node()).await
    }
    async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsError> {
        self.timed(self.inner.enis()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2_api::Ec2;

    #[tokio::test]
    async fn every_call_is_recorded_by_api_and_outcome() {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |s| {
            s.throttle = None;
            s.api_latency = Duration::from_millis(40);
        })
        .await;
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let ec2 = MeteredEc2::new(
            Meter::new(Arc::clone(&metrics), Arc::clone(&clock)),
            Arc::new(sim.clone()),
        );
        ec2.describe_instance(&sim.instance_id()).await.expect("ok");
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("DescribeInstances"), 1);
        ec2.describe_instance(&sim.instance_id())
            .await
            .expect_err("throttled");
        let imds = MeteredImds::new(Arc::new(sim.clone()), Arc::clone(&metrics), clock);
        imds.enis().await.expect("imds");
        let text = metrics.render();
        for line in [
            "awscni_ec2_calls_total{api=\"DescribeInstances\",outcome=\"ok\"} 1",
            "awscni_ec2_calls_total{api=\"DescribeInstances\",outcome=\"throttled\"} 1",
            "awscni_ec2api_req_count{fn=\"DescribeInstances\"} 2",
            "awscni_ec2api_error_count{fn=\"DescribeInstances\"} 1",
            "awscni_ipamd_action_inprogress{fn=\"DescribeInstances\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // Latency on the clock: the simulated call took 40 ms.
        assert!(
            text.contains("awscni_aws_api_latency_ms_sum{api=\"DescribeInstances\",error=\"false\",status=\"200\"} 40"),
            "{text}"
        );
        assert!(text.contains("awscni_aws_api_latency_ms_count{api=\"GetMetadata\""));
    }
}
