//! A source's configuration, as written in a TOML file, and its checks.

use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Smallest `max_blob_bytes` a source may set. Such a source gets packets as sub-packets,
/// at most 256 of them (the sub id is one byte); packets too big even for that go elsewhere.
pub const MIN_BLOB_BYTES: u32 = 1024;
/// How long one operation on a remote source may take, and how long to wait for a connection:
/// a source that takes longer is treated as down and the copy goes (or is read) elsewhere.
pub(super) const REMOTE_TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What kind of machine a source runs on; it scales the source's weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Server,
    Desktop,
    Mobile,
    Embedded,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of this machine (or a mounted one): `path`.
    #[default]
    Local,
    /// An S3-compatible bucket: `endpoint`, `bucket`, `region`, and the keys.
    S3,
}

/// One source, as written in a TOML config (`[[sources]]` entries, say). Fields that do not
/// apply to the source's kind must be left out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub id: u8,
    #[serde(default)]
    pub kind: SourceKind,
    /// Local: the directory (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// S3: `http(s)://host[:port]` of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// S3: defaults to us-east-1, which most S3-compatible services accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// S3: allow a plain-http endpoint (a service on this machine or a private network).
    #[serde(default)]
    pub allow_http: bool,
    /// S3: the folder of the bucket the blobs go in (a bucket shared with other uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default)]
    pub device: Device,
    #[serde(default = "default_bandwidth")]
    pub bandwidth_mbps: f64,
    /// Share of the time the source is reachable, 0..=1.
    #[serde(default = "default_one")]
    pub availability: f64,
    /// How busy the source is already, 0..=1.
    #[serde(default)]
    pub load: f64,
    /// The upload/download ratio the source accepts (1: as much of one as of the other).
    #[serde(default = "default_one")]
    pub traffic_ratio: f64,
    /// The largest blob the source takes; larger packets are split into sub-packets for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blob_bytes: Option<u32>,
}

fn default_bandwidth() -> f64 {
    100.0
}

fn default_one() -> f64 {
    1.0
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("device", &self.device)
            .field("bandwidth_mbps", &self.bandwidth_mbps)
            .field("availability", &self.availability)
            .field("load", &self.load)
            .field("traffic_ratio", &self.traffic_ratio)
            .field("max_blob_bytes", &self.max_blob_bytes)
            .finish_non_exhaustive()
    }
}

impl SourceConfig {
    fn with_kind(id: u8, kind: SourceKind) -> SourceConfig {
        SourceConfig {
            id,
            kind,
            path: None,
            endpoint: None,
            bucket: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            prefix: None,
            device: Device::Server,
            bandwidth_mbps: default_bandwidth(),
            availability: 1.0,
            load: 0.0,
            traffic_ratio: 1.0,
            max_blob_bytes: None,
        }
    }

    /// A local-directory source with default attributes.
    pub fn local(id: u8, path: impl Into<PathBuf>) -> SourceConfig {
        SourceConfig {
            path: Some(path.into()),
            ..SourceConfig::with_kind(id, SourceKind::Local)
        }
    }

    /// An S3-compatible source with default attributes (plain http allowed when `endpoint`
    /// says http).
    pub fn s3(
        id: u8,
        endpoint: &str,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> SourceConfig {
        SourceConfig {
            endpoint: Some(endpoint.into()),
            bucket: Some(bucket.into()),
            access_key_id: Some(access_key_id.into()),
            secret_access_key: Some(secret_access_key.into()),
            allow_http: endpoint.starts_with("http://"),
            ..SourceConfig::with_kind(id, SourceKind::S3)
        }
    }

    /// Checks every field; the error names the first bad one as `sources[id].field`.
    pub fn validate(&self) -> Result<(), StoreError> {
        let field = |name: &str| format!("sources[{}].{name}", self.id);
        let bad = |name: &str, reason: String| Err(StoreError::config(field(name), reason));
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(name, format!("is {v}; it must be between 0 and 1"))
            }
        };
        if !(self.bandwidth_mbps.is_finite() && self.bandwidth_mbps > 0.0) {
            return bad(
                "bandwidth_mbps",
                format!("is {}; it must be a positive number", self.bandwidth_mbps),
            );
        }
        unit("availability", self.availability)?;
        unit("load", self.load)?;
        if !(self.traffic_ratio.is_finite() && self.traffic_ratio > 0.0) {
            return bad(
                "traffic_ratio",
                format!("is {}; it must be a positive number", self.traffic_ratio),
            );
        }
        if let Some(max) = self.max_blob_bytes {
            if max < MIN_BLOB_BYTES {
                return bad(
                    "max_blob_bytes",
                    format!("is {max}; it must be at least {MIN_BLOB_BYTES}"),
                );
            }
        }
        let s3_fields = [
            ("endpoint", self.endpoint.is_some()),
            ("bucket", self.bucket.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("allow_http", self.allow_http),
            ("prefix", self.prefix.is_some()),
        ];
        match self.kind {
            SourceKind::Local => {
                if let Some((name, _)) = s3_fields.iter().find(|f| f.1) {
                    return bad(name, "only applies to kind = \"s3\"".into());
                }
                match &self.path {
                    None => bad("path", "is required for a local source".into()),
                    Some(p) if p.as_os_str().is_empty() => bad("path", "is empty".into()),
                    Some(_) => Ok(()),
                }
            }
            SourceKind::S3 => {
                if self.path.is_some() {
                    return bad("path", "only applies to kind = \"local\"".into());
                }
                let required = |name: &str, v: &Option<String>| match v.as_deref() {
                    Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                    _ => Err(StoreError::config(
                        field(name),
                        "is required for an s3 source",
                    )),
                };
                let endpoint = required("endpoint", &self.endpoint)?;
                if endpoint.starts_with("http://") {
                    if !self.allow_http {
                        return bad(
                            "endpoint",
                            "is plain http; set allow_http = true to use it".into(),
                        );
                    }
                } else if !endpoint.starts_with("https://") {
                    return bad("endpoint", format!("{endpoint:?} is not an http(s) URL"));
                }
                let bucket = required("bucket", &self.bucket)?;
                if !valid_bucket(&bucket) {
                    return bad(
                        "bucket",
                        format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '.', '-')"),
                    );
                }
                if let Some(region) = &self.region {
                    if region.trim().is_empty() {
                        return bad("region", "is empty".into());
                    }
                }
                required("access_key_id", &self.access_key_id)?;
                required("secret_access_key", &self.secret_access_key)?;
                if let Some(prefix) = &self.prefix {
                    let ok = !prefix.is_empty()
                        && prefix.split('/').all(|part| {
                            !part.is_empty()
                                && part != "."
                                && part != ".."
                                && part
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        });
                    if !ok {
                        return bad(
                            "prefix",
                            format!("{prefix:?} must be folder names of a-z, 0-9, '-', '_', '.' joined by '/'"),
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SourceConfig, String> {
        toml::from_str::<SourceConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_toml_source_takes_defaults_and_round_trips() {
        let local = parse("id = 3\npath = \"/srv/blobs\"").unwrap();
        assert_eq!(local.kind, SourceKind::Local);
        assert_eq!(local.device, Device::Server);
        assert_eq!(
            (local.availability, local.load, local.traffic_ratio),
            (1.0, 0.0, 1.0)
        );
        local.validate().unwrap();
        let s3 = parse(
            r#"id = 4
kind = "s3"
endpoint = "http://127.0.0.1:9000"
bucket = "mcloud"
access_key_id = "a"
secret_access_key = "very secret"
allow_http = true
device = "desktop"
bandwidth_mbps = 40
availability = 0.9
load = 0.5
traffic_ratio = 0.5
max_blob_bytes = 8192"#,
        )
        .unwrap();
        s3.validate().unwrap();
        assert_eq!(s3.device, Device::Desktop);
        assert_eq!(s3.max_blob_bytes, Some(8192));
        assert!(!format!("{s3:?}").contains("very secret"));
        let again: SourceConfig = toml::from_str(&toml::to_string(&s3).unwrap()).unwrap();
        assert_eq!(again, s3);
        assert!(parse("id = 1\npath = \"/x\"\ncolour = \"red\"").is_err());
        assert!(parse("id = 1\npath = \"/x\"\ndevice = \"toaster\"").is_err());
    }

    #[test]
    fn a_bad_field_is_named() {
        let named = |c: SourceConfig, field: &str| {
            let e = c.validate().unwrap_err();
            assert_eq!(e.code(), "bad_config");
            assert!(
                e.to_string()
                    .contains(&format!("sources[{}].{field}", c.id)),
                "{e} should name {field}"
            );
        };
        let local = SourceConfig::local(1, "/tmp/x");
        named(
            SourceConfig {
                availability: 1.5,
                ..local.clone()
            },
            "availability",
        );
        named(
            SourceConfig {
                load: -0.1,
                ..local.clone()
            },
            "load",
        );
        named(
            SourceConfig {
                bandwidth_mbps: 0.0,
                ..local.clone()
            },
            "bandwidth_mbps",
        );
        named(
            SourceConfig {
                traffic_ratio: f64::NAN,
                ..local.clone()
            },
            "traffic_ratio",
        );
        named(
            SourceConfig {
                max_blob_bytes: Some(10),
                ..local.clone()
            },
            "max_blob_bytes",
        );
        named(
            SourceConfig {
                path: None,
                ..local.clone()
            },
            "path",
        );
        named(
            SourceConfig {
                bucket: Some("b".into()),
                ..local.clone()
            },
            "bucket",
        );
        let s3 = SourceConfig::s3(2, "http://127.0.0.1:1", "bucket", "a", "b");
        s3.validate().unwrap();
        named(
            SourceConfig {
                allow_http: false,
                ..s3.clone()
            },
            "endpoint",
        );
        named(
            SourceConfig {
                endpoint: Some("ftp://x".into()),
                ..s3.clone()
            },
            "endpoint",
        );
        named(
            SourceConfig {
                bucket: Some("Bad_Bucket".into()),
                ..s3.clone()
            },
            "bucket",
        );
        named(
            SourceConfig {
                bucket: None,
                ..s3.clone()
            },
            "bucket",
        );
        named(
            SourceConfig {
                access_key_id: None,
                ..s3.clone()
            },
            "access_key_id",
        );
        named(
            SourceConfig {
                secret_access_key: Some(" ".into()),
                ..s3.clone()
            },
            "secret_access_key",
        );
        named(
            SourceConfig {
                prefix: Some("../up".into()),
                ..s3.clone()
            },
            "prefix",
        );
        named(
            SourceConfig {
                path: Some("/x".into()),
                ..s3
            },
            "path",
        );
    }
}
