//! Every route's path, shared by the servers that serve it and the clients that call it.

/// Sensors: a challenge to open a session with, then the session.
pub const SESSION_CHALLENGE_PATH: &str = "/v1/session/challenge";
pub const SESSION_PATH: &str = "/v1/session";

/// Sensors → clouds.
pub const UPLOAD_PATH: &str = "/v1/upload";
pub const WATERMARK_PATH: &str = "/v1/watermark";
/// A sensor's robust batch: its reports for one cloud.
pub const ROBUST_UPLOAD_PATH: &str = "/v1/robust/upload";
/// A sensor asks its robust batch's leader to verify it with the other clouds.
pub const ROBUST_SETTLE_PATH: &str = "/v1/robust/settle";
/// Cloud to cloud: a robust batch's verifier shares, for its leader.
pub const PEER_VERIFIER_SHARES_PATH: &str = "/v1/peer/robust/verifier-shares";
/// Cloud to cloud: the leader's messages (or its refusal) for a robust batch.
pub const PEER_FINISH_PATH: &str = "/v1/peer/robust/finish";

/// Apps → clouds.
pub const COMPUTE_PATH: &str = "/v1/compute";
pub const RANGE_PATH: &str = "/v1/range";
/// A cloud's audit log of disclosures (its party's administrators).
pub const AUDIT_PATH: &str = "/v1/audit";

/// Sensors → catalog: the flags of their batches (clouds read flags too).
pub const CREATE_PATH: &str = "/v1/flags/create";
pub const SET_PATH: &str = "/v1/flags/set";
pub const GET_PATH: &str = "/v1/flags/get";
/// A cloud's verdict on robust batches it led the verification of.
pub const VERDICT_PATH: &str = "/v1/flags/verdict";

/// Administrators add revoked app tokens' ids; clouds read them.
pub const REVOCATIONS_PATH: &str = "/v1/revocations";
/// Administrators add revoked sensors; clouds read them.
pub const SENSOR_REVOCATIONS_PATH: &str = "/v1/revocations/sensors";

/// House owners set their access modifiers (with their token); clouds read them.
pub const ACCESS_PATH: &str = "/v1/access";

/// Anyone.
pub const HEALTH_PATH: &str = "/v1/health";
pub const STATUS_PATH: &str = "/v1/status";
