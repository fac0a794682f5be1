//! Turning SDK failures into [`Ec2Error`], by EC2's own error code.
//!
//! The pool engine acts on the class of a failure, not on its text: *wait* (throttled, timed out, 5xx), *stop*
//! (unauthorized: retrying cannot fix an IAM policy), *try elsewhere* (the subnet is out of addresses), *the
//! thing is full* (ENI or instance at its limit), *gone* (not found). The mapping is done in two steps so the
//! second can be tested without the SDK:
//!
//! 1. [`Failure::from_sdk`] reduces an `SdkError` to the facts that matter: EC2's `<Code>` and `<Message>` and
//!    the HTTP status for an error answer, or "timed out", "no answer", "our own rate limit said no", "answer
//!    unreadable", "request not buildable".
//! 2. [`classify`] maps those facts plus what the call was about ([`Context`]: subnet, ENI, resource) to one
//!    [`Ec2Error`] variant:
//!
//! | EC2 code / condition | `Ec2Error` |
//! |---|---|
//! | `RequestLimitExceeded`, `Throttling`, `ThrottlingException`, `RequestThrottled`; our token bucket empty | `Throttled` |
//! | `UnauthorizedOperation` | `Unauthorized` |
//! | `InsufficientFreeAddressesInSubnet`, `InsufficientCidrBlocks` | `SubnetExhausted` (code kept) |
//! | `PrivateIpAddressLimitExceeded` | `IpLimitExceeded` |
//! | `AttachmentLimitExceeded` | `EniLimitExceeded` |
//! | `*.NotFound` (`InvalidNetworkInterfaceID.NotFound`, `InvalidInstanceID.NotFound`, ...) | `NotFound` |
//! | no credentials, or the credentials provider failed (IRSA trust, STS `AccessDenied`) | `Credentials` (permanent) |
//! | attempt or operation timeout, connection refused / reset / DNS / TLS failure | `Timeout` |
//! | anything else, 5xx included | `Other` with EC2's code (or the HTTP status, e.g. `503`, when there is none) |
//!
//! `Other` keeps the code verbatim so logs name it and [`Ec2Error::is_retryable`] can recognise `InternalError`,
//! `Unavailable` and bare 5xx statuses.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use ec2_api::Ec2Error;

use crate::http::ClientThrottled;

/// EC2 codes that mean "slow down".
const THROTTLING_CODES: [&str; 4] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
];

/// What a failed call was about, to fill the fields of the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The subnet the call drew addresses from (CreateNetworkInterface).
    pub subnet: Option<String>,
    /// The ENI the call was about.
    pub eni: Option<String>,
    /// The resource(s) a NotFound refers to, when the call names them.
    pub resource: Option<String>,
}

impl Context {
    pub fn eni(eni: &str) -> Context {
        Context {
            eni: Some(eni.to_string()),
            resource: Some(eni.to_string()),
            ..Context::default()
        }
    }

    pub fn resource(what: impl Into<String>) -> Context {
        Context {
            resource: Some(what.into()),
            ..Context::default()
        }
    }
}

/// The facts of a failure that the classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// EC2 answered with an error document.
    Service {
        code: Option<String>,
        message: String,
        status: u16,
    },
    /// The attempt (`HTTP_TIMEOUT`) or the whole operation timed out.
    Timeout(String),
    /// Our client-side token bucket refused the attempt (see [`crate::bucket`]).
    ClientThrottled(String),
    /// No answer: connection refused or reset, DNS, TLS.
    NoAnswer(String),
    /// The request was never signed: no credentials, or the credentials provider failed (IRSA's
    /// AssumeRoleWithWebIdentity refused, STS AccessDenied, no web identity token).
    Credentials(String),
    /// An answer that could not be read as EC2's.
    BadResponse { status: u16, message: String },
    /// The request could not be built.
    Construction(String),
}

impl Failure {
    /// Reduces an SDK error to its facts.
    pub fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        let text = DisplayErrorContext(err).to_string();
        match err {
            SdkError::ServiceError(se) => Failure::Service {
                code: se.err().code().map(str::to_string),
                message: se.err().message().unwrap_or_default().to_string(),
                status: se.raw().status().as_u16(),
            },
            SdkError::TimeoutError(_) => Failure::Timeout(text),
            SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_)
                if is_credentials_failure(err, &text) =>
            {
                Failure::Credentials(text)
            }
            SdkError::DispatchFailure(df) => {
                if let Some(throttled) = find_source::<ClientThrottled>(err) {
                    Failure::ClientThrottled(throttled.to_string())
                } else if df.is_timeout() {
                    Failure::Timeout(text)
                } else {
                    Failure::NoAnswer(text)
                }
            }
            SdkError::ResponseError(re) => Failure::BadResponse {
                status: re.raw().status().as_u16(),
                message: text,
            },
            SdkError::ConstructionFailure(_) => Failure::Construction(text),
            _ => Failure::NoAnswer(text),
        }
    }
}

/// Whether a failure before any answer came from the credentials chain (the request was never signed): a
/// [`CredentialsError`] in the source chain or, where the orchestrator flattened it, its text.
pub fn is_credentials_failure(err: &(dyn StdError + 'static), text: &str) -> bool {
    find_source::<CredentialsError>(err).is_some() || {
        let t = text.to_ascii_lowercase();
        t.contains("credentials") && !t.contains("timed out") && !t.contains("timeout")
    }
}

/// The first error of type `T` in `err`'s source chain.
fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Maps a failure of `api` to the error the pool engine acts on; see the module docs for the table.
pub fn classify(api: &'static str, ctx: &Context, failure: Failure) -> Ec2Error {
    match failure {
        Failure::Service {
            code,
            message,
            status,
        } => {
            let code = code.unwrap_or_else(|| status.to_string());
            classify_code(api, ctx, code, message)
        }
        Failure::Timeout(message) => Ec2Error::Timeout { api, message },
        Failure::NoAnswer(message) => Ec2Error::Timeout {
            api,
            message: format!("no answer from EC2: {message}"),
        },
        Failure::ClientThrottled(_) => Ec2Error::Throttled { api },
        Failure::Credentials(message) => Ec2Error::Credentials { api, message },
        Failure::BadResponse { status, message } => Ec2Error::Other {
            api,
            code: if status >= 500 {
                status.to_string()
            } else {
                "UnreadableResponse".to_string()
            },
            message,
        },
        Failure::Construction(message) => Ec2Error::Other {
            api,
            code: "InvalidRequest".to_string(),
            message,
        },
    }
}

fn classify_code(api: &'static str, ctx: &Context, code: String, message: String) -> Ec2Error {
    match code.as_str() {
        c if THROTTLING_CODES.contains(&c) => Ec2Error::Throttled { api },
        "UnauthorizedOperation" => Ec2Error::Unauthorized { api },
        "InsufficientFreeAddressesInSubnet" | "InsufficientCidrBlocks" => {
            let subnet = match (&ctx.subnet, &ctx.eni) {
                (Some(s), _) => s.clone(),
                (None, Some(eni)) => format!("of {eni}"),
                (None, None) => "(unknown)".to_string(),
            };
            Ec2Error::SubnetExhausted { api, subnet, code }
        }
        "PrivateIpAddressLimitExceeded" => Ec2Error::IpLimitExceeded {
            api,
            eni: ctx.eni.clone().unwrap_or_else(|| "(unknown)".to_string()),
        },
        "AttachmentLimitExceeded" => Ec2Error::EniLimitExceeded { api },
        c if c.ends_with(".NotFound") => Ec2Error::NotFound {
            api,
            what: match &ctx.resource {
                Some(r) => format!("{r} ({code})"),
                None if message.is_empty() => code.clone(),
                None => format!("{message} ({code})"),
            },
        },
        _ => Ec2Error::Other { api, code, message },
    }
}

/// [`Failure::from_sdk`] then [`classify`].
pub fn from_sdk<E>(api: &'static str, ctx: &Context, err: SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let e = classify(api, ctx, Failure::from_sdk(&err));
    tracing::debug!(api, code = e.code(), error = %DisplayErrorContext(&err), "EC2 call failed");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Failure {
        Failure::Service {
            code: Some(code.into()),
            message: format!("{code} says EC2"),
            status,
        }
    }

    #[test]
    fn every_named_code_gets_its_own_class() {
        let ctx = Context {
            subnet: Some("subnet-1".into()),
            eni: Some("eni-1".into()),
            resource: Some("eni-1".into()),
        };
        let api = "AssignPrivateIpAddresses";
        assert_eq!(
            classify(api, &ctx, service("UnauthorizedOperation", 403)),
            Ec2Error::Unauthorized { api }
        );
        for code in THROTTLING_CODES {
            assert_eq!(
                classify(api, &ctx, service(code, 503)),
                Ec2Error::Throttled { api },
                "{code}"
            );
        }
        for code in [
            "InsufficientFreeAddressesInSubnet",
            "InsufficientCidrBlocks",
        ] {
            assert_eq!(
                classify(api, &ctx, service(code, 400)),
                Ec2Error::SubnetExhausted {
                    api,
                    subnet: "subnet-1".into(),
                    code: code.into()
                }
            );
        }
        assert_eq!(
            classify(api, &ctx, service("PrivateIpAddressLimitExceeded", 400)),
            Ec2Error::IpLimitExceeded {
                api,
                eni: "eni-1".into()
            }
        );
        assert_eq!(
            classify(api, &ctx, service("AttachmentLimitExceeded", 400)),
            Ec2Error::EniLimitExceeded { api }
        );
        assert_eq!(
            classify(
                api,
                &ctx,
                service("InvalidNetworkInterfaceID.NotFound", 400)
            ),
            Ec2Error::NotFound {
                api,
                what: "eni-1 (InvalidNetworkInterfaceID.NotFound)".into()
            }
        );
    }

    #[test]
    fn a_credentials_failure_is_permanent_and_says_so() {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        for source in [
            CredentialsError::provider_error(std::io::Error::other(
                "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity",
            )),
            CredentialsError::not_loaded("no providers in chain provided credentials"),
        ] {
            let err: SdkError<aws_sdk_ec2::Error, HttpResponse> =
                SdkError::dispatch_failure(ConnectorError::other(Box::new(source), None));
            let failure = Failure::from_sdk(&err);
            assert!(matches!(failure, Failure::Credentials(_)), "{failure:?}");
            let e = classify("DescribeNetworkInterfaces", &Context::default(), failure);
            assert!(matches!(e, Ec2Error::Credentials { .. }), "{e:?}");
            assert!(!e.is_retryable());
            assert_eq!(e.code(), "CredentialsError");
            let msg = e.to_string();
            assert!(
                msg.contains("no usable AWS credentials") && !msg.contains("no answer from EC2"),
                "{msg}"
            );
        }
        // A connection failure is still "no answer", retried.
        let err: SdkError<aws_sdk_ec2::Error, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::io(Box::new(std::io::Error::other("connection refused"))),
        );
        let e = classify("X", &Context::default(), Failure::from_sdk(&err));
        assert!(
            matches!(e, Ec2Error::Timeout { .. }) && e.is_retryable(),
            "{e:?}"
        );
    }

    #[test]
    fn unauthorized_names_the_missing_iam_action() {
        let e = classify(
            "CreateNetworkInterface",
            &Context::default(),
            service("UnauthorizedOperation", 403),
        );
        let msg = e.to_string();
        assert!(msg.contains("ec2:CreateNetworkInterface"), "{msg}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn the_classes_carry_ec2_codes_for_logs_and_retry_decisions() {
        let ctx = Context::default();
        let e = classify("X", &ctx, service("RequestLimitExceeded", 503));
        assert_eq!(e.code(), "RequestLimitExceeded");
        assert!(e.is_retryable());
        let e = classify("X", &ctx, service("UnauthorizedOperation", 403));
        assert_eq!(e.code(), "UnauthorizedOperation");
        assert!(!e.is_retryable());
        let e = classify("X", &ctx, service("InsufficientCidrBlocks", 400));
        assert_eq!(e.code(), "InsufficientCidrBlocks");
        assert!(!e.is_retryable());
    }

    #[test]
    fn subnet_exhaustion_names_the_eni_when_the_subnet_is_not_known() {
        let e = classify(
            "AssignPrivateIpAddresses",
            &Context::eni("eni-9"),
            service("InsufficientFreeAddressesInSubnet", 400),
        );
        assert!(e.to_string().contains("subnet of eni-9"), "{e}");
    }

    #[test]
    fn not_found_without_context_keeps_ec2s_message() {
        let e = classify(
            "DescribeInstances",
            &Context::default(),
            Failure::Service {
                code: Some("InvalidInstanceID.NotFound".into()),
                message: "The instance ID 'i-1' does not exist".into(),
                status: 400,
            },
        );
        let Ec2Error::NotFound { what, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(what.contains("i-1") && what.contains("InvalidInstanceID.NotFound"));
    }

    #[test]
    fn server_errors_stay_retryable_others() {
        let ctx = Context::default();
        let e = classify("X", &ctx, service("InternalError", 500));
        assert!(matches!(&e, Ec2Error::Other { code, .. } if code == "InternalError"));
        assert!(e.is_retryable());
        let e = classify("X", &ctx, service("Unavailable", 503));
        assert!(e.is_retryable());
        // A 5xx without a code: the status stands in for it, and is retryable.
        let e = classify(
            "X",
            &ctx,
            Failure::Service {
                code: None,
                message: String::new(),
                status: 502,
            },
        );
        assert_eq!(e.code(), "502");
        assert!(e.is_retryable());
        let e = classify(
            "X",
            &ctx,
            Failure::BadResponse {
                status: 504,
                message: "html".into(),
            },
        );
        assert_eq!(e.code(), "504");
        assert!(e.is_retryable());
        // A client error EC2 does not name in our table is neither retried nor misfiled.
        let e = classify("X", &ctx, service("InvalidParameterValue", 400));
        assert_eq!(e.code(), "InvalidParameterValue");
        assert!(!e.is_retryable());
    }

    #[test]
    fn timeouts_and_silence_are_timeouts_and_our_own_limit_is_throttling() {
        let ctx = Context::default();
        let e = classify("X", &ctx, Failure::Timeout("attempt timeout".into()));
        assert!(matches!(e, Ec2Error::Timeout { .. }));
        assert!(e.is_retryable());
        let e = classify("X", &ctx, Failure::NoAnswer("connection refused".into()));
        assert!(matches!(&e, Ec2Error::Timeout { message, .. } if message.contains("refused")));
        assert!(e.is_retryable());
        let e = classify("X", &ctx, Failure::ClientThrottled("bucket".into()));
        assert_eq!(e, Ec2Error::Throttled { api: "X" });
        let e = classify("X", &ctx, Failure::Construction("bad".into()));
        assert!(!e.is_retryable());
    }
}
