//! EC2's failures as the simulator produces them: the per-API request-rate buckets, a throttled window, and
//! injected faults (5xx, timeouts before or after EC2 applied the call, throttling, missing permissions).

use std::time::Duration;

use ec2_api::bucket::TokenBucket;
use ec2_api::Ec2Error;

use crate::spec::Fault;
use crate::{Api, SimEc2};

impl SimEc2 {
    /// Counts the call and applies throttling and injected faults. `Ok(Some(fault))` is a fault to apply after
    /// the call ran (a timeout after EC2 applied it).
    pub(crate) async fn gate(&self, api: &'static str) -> Result<Option<Fault>, Ec2Error> {
        if !self.api_latency.is_zero() {
            self.clock.sleep(self.api_latency).await;
        }
        if let Some(path) = &self.fragment_file {
            let wanted = path.exists();
            if wanted != self.is_fragmented() {
                if wanted {
                    let n = self.fragment_subnet(None);
                    tracing::info!(file = %path.display(), tenants = n, "simulated subnets fragmented");
                } else {
                    self.defragment_subnet(None);
                    tracing::info!(file = %path.display(), "simulated subnets no longer fragmented");
                }
            }
        }
        self.check_vpc_file();
        let now = self.clock.now();
        let fault = {
            let mut st = self.lock();
            *st.calls.entry(api).or_default() += 1;
            if now < st.throttled_until {
                return Err(Ec2Error::Throttled { api });
            }
            if let Some(t) = self.throttle {
                let (cap, rate) = if Api::from_name(api).is_none_or(Api::is_mutating) {
                    t.mutating
                } else {
                    t.non_mutating
                };
                let bucket = st
                    .buckets
                    .entry(api)
                    .or_insert_with(|| TokenBucket::new(cap, rate, now));
                if bucket.try_take(now).is_err() {
                    return Err(Ec2Error::Throttled { api });
                }
            }
            let pos = st
                .faults
                .iter()
                .position(|(a, _, n)| *n > 0 && a.as_deref().is_none_or(|a| a == api));
            match pos {
                Some(i) => {
                    let f = st.faults[i].1;
                    st.faults[i].2 -= 1;
                    if st.faults[i].2 == 0 {
                        st.faults.remove(i);
                    }
                    Some(f)
                }
                None => None,
            }
        };
        match fault {
            None => Ok(None),
            Some(Fault::ServerError) => Err(Ec2Error::Other {
                api,
                code: "InternalError".into(),
                message: "An internal error has occurred (injected)".into(),
            }),
            Some(Fault::Unavailable) => Err(Ec2Error::Other {
                api,
                code: "Unavailable".into(),
                message: "The service is unavailable (injected)".into(),
            }),
            Some(Fault::Throttle) => Err(Ec2Error::Throttled { api }),
            Some(Fault::Unauthorized) => Err(Ec2Error::Unauthorized { api }),
            Some(Fault::AttachmentLimit) => Err(Ec2Error::EniLimitExceeded { api }),
            Some(Fault::Timeout) => {
                self.clock.sleep(self.timeout).await;
                Err(Ec2Error::Timeout {
                    api,
                    message: "no response (injected)".into(),
                })
            }
            Some(Fault::TimeoutAfterApply) => Ok(Some(Fault::TimeoutAfterApply)),
        }
    }

    pub(crate) async fn finish<T>(
        &self,
        api: &'static str,
        post: Option<Fault>,
        res: Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        self.snapshot();
        match (post, res) {
            (Some(Fault::TimeoutAfterApply), Ok(_)) => {
                self.clock.sleep(self.timeout).await;
                Err(Ec2Error::Timeout {
                    api,
                    message: "no response (injected; the call was applied)".into(),
                })
            }
            (_, res) => res,
        }
    }

    /// Makes the next `count` calls of `api` (or of any API) fail with `fault`.
    pub fn inject_faults(&self, fault: Fault, api: Option<&str>, count: u32) {
        self.lock()
            .faults
            .push((api.map(str::to_string), fault, count));
    }

    /// Every call is throttled for `d` from now (a burst of other clients on the account).
    pub fn throttle_for(&self, d: Duration) {
        let now = self.clock.now();
        let mut st = self.lock();
        st.throttled_until = now + d;
        for b in st.buckets.values_mut() {
            b.drain(now);
        }
    }
}
