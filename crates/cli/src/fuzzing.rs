//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with `cargo +nightly fuzz`).
//!
//! They live here, in the workspace, rather than in the fuzz package, because two things run
//! them: the libFuzzer targets, which only wrap them, and the stable test
//! `crates/cli/tests/fuzz_corpus.rs`, which feeds every file of `fuzz/corpus/<target>/` through
//! the same function, so an input that once crashed a target stays caught on CI (which has no
//! nightly toolchain and cannot run libFuzzer).
//!
//! Each target groups the decoders of one kind of sender and dispatches on its first input byte
//! (modulo the number of its decoders) to one of them. Every decoder runs the project's real
//! code path (decode, then the checks a server makes before it acts) and asserts what must hold
//! of what passed: that it re-encodes to a value that decodes equal, and that no validator lets
//! a value outside its stated bound through. A panic, or a failed assertion, is a finding.
//!
//! `seeds()` makes the seed corpus: valid encodings of every message kind and real
//! configuration files (see `docs/reliability.md` for how to regenerate it).

use mcloud_catalog::raft::bounds::{self, MAX_LOG_INDEX, MAX_NODE_ID, MAX_TERM};
use mcloud_catalog::raft::network::Envelope;
use mcloud_catalog::raft::node::{Forwarded, MembershipChange};
use mcloud_catalog::raft::snapshot_transfer::{Assembler, SnapshotChunk, MAX_SNAPSHOT_BYTES};
use mcloud_catalog::raft::state_machine::{self, StateMachine};
use mcloud_catalog::raft::types::{
    self as raft_types, AccessRules, Assignment, Batch, LogId, NodeId, Op, SnapshotMeta,
    TypeConfig, Vote,
};
use mcloud_catalog::raft::AccessRequest;
use mcloud_catalog::rules::{check_request, check_ttls, Table, MAX_TTL_MS};
use mcloud_cloud::node::{
    check_range_specs, check_scope, validate_upload, watermark_progress, windows_of,
};
use mcloud_cloud::service::{check_range_list, parse, MAX_RANGES_PER_REQUEST};
use mcloud_cloud::CloudConfig;
use mcloud_core::auth::access::{MAX_NAME_CHARS, MAX_RULE_ENTRIES};
use mcloud_core::auth::app::{
    self, AppRequest, AppToken, Attenuation, HouseScope, QueryKind, TokenAuthority,
};
use mcloud_core::auth::authority::SensorCredentials;
use mcloud_core::auth::sensor::{
    Challenge, PartySecret, Secret, SensorScope, SessionIssuer, SessionRequest, SessionToken,
    CHALLENGE_SECS, MAX_SCOPE_PLUGS, SESSION_SECS,
};
use mcloud_core::disclosure::{
    DisclosurePolicy, MAX_DP_VALUE, MAX_EPSILON, MAX_MIN_CONTRIBUTORS, MAX_REVEALS,
    MAX_STRIDE_WINDOWS,
};
use mcloud_core::http::decode;
use mcloud_core::robust::{
    Finish, FinishRequest, Robust, RobustUploadRequest, VerifierShares, VerifyKey,
};
use mcloud_core::upload::{expand, explicit_party, split_batch, PlainHistogram};
use mcloud_core::wire::{
    upload_wire_bytes_max, CreateFlag, CreateFlagsRequest, FlagIds, FlagState, RangeSpec, Shares,
    UploadRequest, WatermarkRequest, MAX_BATCH_RECORDS, MAX_BODY_BYTES, MAX_FLAGS_PER_REQUEST,
};
use mcloud_core::{fixed, BatchId, GroupKey, GroupLevel, Metric, Reading};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftLogId, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The clock every target runs at (Unix seconds), so an input behaves the same every run.
pub const NOW: u64 = 1_700_000_000;

/// Splits the selector byte off an input.
fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(s, rest)| (*s, rest))
}

/// The first 8 bytes as a little-endian u64 (zero-padded), and the rest.
fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(bytes), &data[n..])
}

/// Re-encoding what decoded gives bytes that decode to an equal value.
fn assert_roundtrip<T>(value: &T)
where
    T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let bytes = postcard::to_stdvec(value).unwrap();
    let again: T = decode(&bytes).unwrap();
    assert_eq!(&again, value, "re-encoding changed the value");
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A scratch directory (in memory where the machine has /dev/shm), removed when dropped.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("mcloud-fuzz")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("mcloud-fuzz").tempdir()
    };
    made.unwrap()
}

/// A fresh replicated-catalog state machine in its own directory, removed when dropped.
struct FreshMachine {
    machine: StateMachine,
    _dir: tempfile::TempDir,
}

impl FreshMachine {
    fn new() -> FreshMachine {
        let dir = scratch();
        FreshMachine {
            machine: StateMachine::open(dir.path(), Default::default()).unwrap(),
            _dir: dir,
        }
    }

    fn get(&mut self) -> &mut StateMachine {
        &mut self.machine
    }
}

/// What a state machine holds, in a comparable form.
#[derive(Debug, PartialEq)]
struct Held {
    clock: u64,
    flags: Vec<(BatchId, FlagState, u64)>,
    assignments: Vec<(u16, Assignment)>,
    revoked: Vec<String>,
    revoked_sensors: Vec<u32>,
    access: Vec<(String, AccessRules)>,
}

fn held(machine: &StateMachine) -> Held {
    let shared = machine.shared();
    let s = state_machine::read(&shared);
    let mut flags: Vec<_> = s
        .table
        .flags
        .iter()
        .map(|(id, f)| (*id, f.state, f.deadline_ms))
        .collect();
    flags.sort_by_key(|f| f.0);
    Held {
        clock: s.clock,
        flags,
        assignments: s
            .registers
            .assignments
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect(),
        revoked: s.registers.revoked.iter().cloned().collect(),
        revoked_sensors: s.registers.revoked_sensors.iter().copied().collect(),
        access: s
            .registers
            .access
            .iter()
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect(),
    }
}

/// Builds a snapshot of `machine`, installs it in a fresh one and checks both hold the same.
fn assert_snapshot_roundtrip(machine: &mut StateMachine) {
    let before = held(machine);
    let snapshot = runtime().block_on(machine.build_snapshot()).unwrap();
    let mut other = FreshMachine::new();
    runtime()
        .block_on(
            other
                .get()
                .install_snapshot(&snapshot.meta, snapshot.snapshot),
        )
        .unwrap();
    assert_eq!(
        held(other.get()),
        before,
        "a snapshot did not restore its state"
    );
}

// ---------------------------------------------------------------------------------------------
// cloud_requests: what sensors and apps send a cloud.

/// A cloud's endpoints: 0 UPLOAD body, 1 watermark body, 2 COMPUTE query, 3 RANGE query,
/// 4 range-list body, 5 audit query.
pub fn cloud_requests(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    match selector % 6 {
        0 => upload(rest),
        1 => watermark(rest),
        2 => compute_query(rest),
        3 => range_query(rest),
        4 => range_list(rest),
        _ => audit_query(rest),
    }
}

/// The cloud a body is checked at: the first byte picks its party and number of parties.
fn cloud_config(b: u8) -> CloudConfig {
    let parties = 1 + u16::from(b & 3);
    CloudConfig {
        parties,
        party: u16::from((b >> 2) & 3) % parties,
        ..CloudConfig::default()
    }
}

fn upload(data: &[u8]) {
    let Some((b, body)) = split(data) else {
        return;
    };
    let config = cloud_config(b);
    // The node's order (`CloudNode::upload`): decode, scope, metadata, windows, expansion.
    let Ok(request) = decode::<UploadRequest>(body) else {
        return;
    };
    assert_roundtrip(&request);
    let scope = SensorScope {
        sensor: request.batch_id.sensor(),
        house: (b & 0x10 != 0).then_some(0),
        plugs: None,
    };
    if check_scope(&request, &scope).is_err() {
        assert!(
            scope.house.is_some(),
            "a sensor's own unscoped batch was refused"
        );
        return;
    }
    if validate_upload(&config, &request, NOW).is_err() {
        return;
    }
    let horizon = NOW + config.max_future_secs;
    let items = request.records.len() + request.histograms.len();
    assert!(request.parties == config.parties && request.party == config.party);
    assert!(
        items > 0 && items <= MAX_BATCH_RECORDS,
        "{items} items passed"
    );
    assert!(request.explicit_share_bytes() <= MAX_BODY_BYTES);
    let keys: HashSet<u64> = request.records.iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), request.records.len(), "a duplicate key passed");
    assert!(request.records.iter().all(|r| r.ts <= horizon));
    assert!(request
        .histograms
        .iter()
        .all(|h| h.window_start <= horizon && h.window_start % 30 == 0));
    let windows = windows_of(&request, config.window_secs);
    assert!(windows.windows(2).all(|w| w[0] < w[1]));
    assert!(windows.iter().all(|w| w % config.window_secs == 0));
    let encoded = postcard::to_stdvec(&request).unwrap().len();
    let (records, histograms) = (request.records.len(), request.histograms.len());
    let explicit = matches!(request.shares, Shares::Explicit { .. });
    let Ok(batch) = expand(request.clone()) else {
        return;
    };
    // What expands is what a sender may send: its body fits the bound senders cut batches by.
    assert!(
        encoded <= upload_wire_bytes_max(records, histograms),
        "a {encoded}-byte body of {records} records and {histograms} histograms"
    );
    assert_eq!(
        explicit,
        request.party == explicit_party(request.batch_id, request.parties)
    );
    assert_eq!(batch.records.len(), records);
    assert_eq!(batch.histograms.len(), histograms);
    assert!(batch
        .histograms
        .iter()
        .all(|h| h.counts.len() == mcloud_core::histogram::BUCKETS));
    for (meta, share) in request.records.iter().zip(&batch.records) {
        assert_eq!((meta.key, meta.ts), (share.key, share.ts));
    }
}

fn watermark(data: &[u8]) {
    let Ok(req) = decode::<WatermarkRequest>(data) else {
        return;
    };
    assert_roundtrip(&req);
    let config = CloudConfig::default();
    let Ok(progress) = watermark_progress(&config, &req, NOW) else {
        assert!(req.ts > NOW + config.max_future_secs);
        return;
    };
    assert!(req.ts <= NOW + config.max_future_secs);
    assert!(progress >= req.ts);
    assert!(progress <= req.ts + config.window_secs + config.grace_secs);
}

fn uri(path: &str, query: &[u8]) -> Option<axum::http::Uri> {
    let query = std::str::from_utf8(query).ok()?;
    axum::http::Uri::try_from(format!("{path}?{query}")).ok()
}

fn compute_query(data: &[u8]) {
    let Some(uri) = uri(mcloud_core::paths::COMPUTE_PATH, data) else {
        return;
    };
    if let Ok((from, to, _)) = parse::compute(&uri) {
        assert!(from <= to, "COMPUTE [{from}, {to}) passed");
    }
}

fn range_query(data: &[u8]) {
    let Some((w, query)) = split(data) else {
        return;
    };
    let Some(uri) = uri(mcloud_core::paths::RANGE_PATH, query) else {
        return;
    };
    let Ok(spec) = parse::range(&uri) else {
        return;
    };
    assert_range_checked(&[spec], 1 + u64::from(w));
}

/// The node's RANGE check lets only increasing, window-aligned bounds through.
fn assert_range_checked(specs: &[RangeSpec], window_secs: u64) {
    if check_range_specs(specs, window_secs).is_ok() {
        for s in specs {
            assert!(s.from < s.to, "RANGE [{}, {}) passed", s.from, s.to);
            assert!(s.from % window_secs == 0 && s.to % window_secs == 0);
        }
    }
}

fn range_list(data: &[u8]) {
    let Some((w, body)) = split(data) else {
        return;
    };
    let Ok(specs) = decode::<Vec<RangeSpec>>(body) else {
        return;
    };
    assert_roundtrip(&specs);
    if check_range_list(&specs).is_err() {
        assert!(specs.len() > MAX_RANGES_PER_REQUEST);
        return;
    }
    assert!(specs.len() <= MAX_RANGES_PER_REQUEST);
    assert_range_checked(&specs, 1 + u64::from(w));
}

fn audit_query(data: &[u8]) {
    if let Some(uri) = uri(mcloud_core::paths::AUDIT_PATH, data) {
        let _ = parse::audit(&uri);
    }
}

// ---------------------------------------------------------------------------------------------
// credentials: what a caller presents to prove who it is.

/// The party secret every credentials target checks against (fixed, so seeds stay valid).
const PARTY_SECRET: &str = "6d636c6f75642066757a7a696e67207061727479207365637265742030303030";
/// The token authority's private key for the app-token targets (fixed, ditto).
const TOKEN_KEY: &str = "4d0e2a1f6b7c8d9e0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f50617";

fn issuer() -> &'static SessionIssuer {
    static ISSUER: OnceLock<SessionIssuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        SessionIssuer::new(PartySecret {
            party: 0,
            secret: Secret::from_hex(PARTY_SECRET).unwrap(),
        })
    })
}

fn party_secret() -> PartySecret {
    PartySecret {
        party: 0,
        secret: Secret::from_hex(PARTY_SECRET).unwrap(),
    }
}

fn authority() -> &'static TokenAuthority {
    static AUTHORITY: OnceLock<TokenAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| TokenAuthority::from_private_hex(TOKEN_KEY).unwrap())
}

/// Sensor sessions and app tokens: 0 a challenge (the client decodes it), 1 a session request
/// body, 2 a session token header, 3 an app token, 4 an app token built and narrowed as the
/// input says, 5 key material in hex.
pub fn credentials(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    match selector % 6 {
        0 => challenge(rest),
        1 => session_request(rest),
        2 => session_header(rest),
        3 => app_token(rest),
        4 => narrowed_token(rest),
        _ => key_material(rest),
    }
}

fn challenge(data: &[u8]) {
    let Ok(challenge) = decode::<Challenge>(data) else {
        return;
    };
    assert_roundtrip(&challenge);
    // A sensor answers any challenge; the node opens a session only for one it issued.
    let scope = SensorScope {
        sensor: 7,
        house: Some(1),
        plugs: Some(vec![1, 2]),
    };
    let key = party_secret().sensor_key(&scope);
    let request = SessionRequest::answer(scope.clone(), challenge.clone(), &key);
    if let Ok(token) = issuer().open(&request, NOW) {
        assert_eq!(challenge.party, issuer().party());
        assert!(challenge.issued <= NOW && NOW - challenge.issued <= CHALLENGE_SECS);
        assert_eq!(issuer().verify(&token.to_header(), NOW), Ok(scope));
    }
}

fn session_request(data: &[u8]) {
    let Ok(request) = decode::<SessionRequest>(data) else {
        return;
    };
    let Ok(token) = issuer().open(&request, NOW) else {
        return;
    };
    assert!(request
        .scope
        .plugs
        .as_ref()
        .is_none_or(|p| p.len() <= MAX_SCOPE_PLUGS));
    assert_eq!(token.scope, request.scope);
    assert_eq!(token.expires, NOW + SESSION_SECS);
    let c = &request.challenge;
    assert!(c.party == issuer().party() && c.issued <= NOW && NOW - c.issued <= CHALLENGE_SECS);
    assert_eq!(issuer().verify(&token.to_header(), NOW), Ok(request.scope));
}

fn session_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = SessionToken::from_header(text) {
        assert!(token
            .scope
            .plugs
            .as_ref()
            .is_none_or(|p| p.len() <= MAX_SCOPE_PLUGS));
        assert_eq!(SessionToken::from_header(&token.to_header()), Ok(token));
    }
    if let Ok(scope) = issuer().verify(text, NOW) {
        let token = SessionToken::from_header(text).unwrap();
        assert_eq!(token.scope, scope);
        assert!(token.party == issuer().party() && NOW <= token.expires);
    }
}

const QUERIES: [QueryKind; 3] = [QueryKind::Compute, QueryKind::Range, QueryKind::Histograms];
const LEVELS: [GroupLevel; 3] = [GroupLevel::House, GroupLevel::Household, GroupLevel::Plug];

fn app_token(data: &[u8]) {
    let Some((b, text)) = split(data) else {
        return;
    };
    let Ok(token) = std::str::from_utf8(text) else {
        return;
    };
    let request = AppRequest {
        now: NOW,
        query: QUERIES[usize::from(b % 3)],
        level: LEVELS[usize::from((b / 3) % 3)],
    };
    let root = authority().root();
    let Ok(grant) = app::authorize(token, &root, &request, |_| false) else {
        return;
    };
    assert!(
        grant.expires.is_none_or(|at| NOW <= at),
        "an expired token passed"
    );
    assert!(!grant.revocation_ids.is_empty());
    // Revoking any one of its blocks revokes the token.
    for id in &grant.revocation_ids {
        let revoked = app::authorize(token, &root, &request, |r| r == id);
        assert!(matches!(revoked, Err(app::AppTokenError::Revoked(_))));
    }
}

/// An owner's token and the narrowings applied to it, as a narrowed-token input decodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenSpec {
    pub houses: Vec<u32>,
    pub expires: u64,
    pub narrowings: Vec<Narrowing>,
    pub query: u8,
    pub level: u8,
    pub now_offset: i16,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Narrowing {
    pub app: Option<String>,
    pub houses: Option<Vec<u32>>,
    pub plugs: Option<Vec<u32>>,
    pub metrics: Option<Vec<Metric>>,
    pub queries: Option<Vec<u8>>,
    pub levels: Option<Vec<u8>>,
    pub expires: Option<u64>,
}

/// Keeps an input's token small enough to sign and verify quickly.
const MAX_SPEC_ITEMS: usize = 8;

fn narrowed_token(data: &[u8]) {
    let Ok(spec) = decode::<TokenSpec>(data) else {
        return;
    };
    fn small<T>(v: &Option<Vec<T>>) -> bool {
        v.as_ref().is_none_or(|v| v.len() <= MAX_SPEC_ITEMS)
    }
    if spec.houses.len() > MAX_SPEC_ITEMS
        || spec.narrowings.len() > 4
        || !spec.narrowings.iter().all(|n| {
            small(&n.houses)
                && small(&n.plugs)
                && small(&n.metrics)
                && small(&n.queries)
                && small(&n.levels)
                && n.app.as_ref().is_none_or(|a| a.len() <= 64)
        })
    {
        return;
    }
    let root = authority().root();
    let Ok(mut token) = authority().issue_owner("owner", &spec.houses, spec.expires) else {
        return;
    };
    fn pick<T: Copy>(v: &Option<Vec<u8>>, all: &[T]) -> Option<Vec<T>> {
        v.as_ref()
            .map(|v| v.iter().map(|&i| all[usize::from(i) % all.len()]).collect())
    }
    for n in &spec.narrowings {
        let narrow = Attenuation {
            app: n.app.clone(),
            houses: n.houses.clone(),
            plugs: n.plugs.clone(),
            metrics: n.metrics.clone(),
            queries: pick(&n.queries, &QUERIES),
            levels: pick(&n.levels, &LEVELS),
            expires: n.expires,
        };
        token = match token.attenuate(&root, &narrow) {
            Ok(t) => t,
            Err(_) => return,
        };
    }
    let request = AppRequest {
        now: NOW.saturating_add_signed(i64::from(spec.now_offset)),
        query: QUERIES[usize::from(spec.query % 3)],
        level: LEVELS[usize::from(spec.level % 3)],
    };
    let verdict = app::authorize(&token.0, &root, &request, |_| false);
    // What every block allows, intersected: the grant never reaches past it.
    let expires = std::iter::once(spec.expires)
        .chain(spec.narrowings.iter().filter_map(|n| n.expires))
        .min()
        .unwrap_or(spec.expires);
    let allowed = |list: &Option<Vec<u8>>, i: usize, n: usize| {
        list.as_ref()
            .is_none_or(|l| l.iter().any(|&x| usize::from(x) % n == i))
    };
    let in_scope = spec.narrowings.iter().all(|n| {
        allowed(&n.queries, usize::from(spec.query % 3), 3)
            && allowed(&n.levels, usize::from(spec.level % 3), 3)
    });
    let Ok(grant) = verdict else {
        return;
    };
    assert!(
        request.now <= expires,
        "granted at {} past {expires}",
        request.now
    );
    assert_eq!(grant.expires, Some(expires));
    assert!(in_scope, "granted a query or level a block excludes");
    assert_eq!(grant.user, "owner");
    let HouseScope::Only(houses) = &grant.houses else {
        panic!("an owner's token granted every house");
    };
    for h in houses {
        assert!(spec.houses.contains(h), "house {h} is not the owner's");
        for n in &spec.narrowings {
            assert!(n.houses.as_ref().is_none_or(|set| set.contains(h)));
        }
    }
    for n in &spec.narrowings {
        if let Some(set) = &n.plugs {
            let granted = grant.plugs.as_ref().expect("plugs narrowed");
            assert!(granted.iter().all(|p| set.contains(p)));
        }
        if let Some(set) = &n.metrics {
            let granted = grant.metrics.as_ref().expect("metrics narrowed");
            assert!(granted.iter().all(|m| set.contains(m)));
        }
        if let Some(app) = &n.app {
            assert!(grant.app.is_some(), "app {app} lost");
        }
    }
    assert_eq!(
        AppToken(token.0.clone()).revocation_ids(&root).unwrap(),
        grant.revocation_ids
    );
}

fn key_material(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secret) = Secret::from_hex(text) {
        assert_eq!(Secret::from_hex(&secret.to_hex()), Ok(secret));
    }
    if let Ok(root) = app::TokenRoot::from_hex(text) {
        let again = app::TokenRoot::from_hex(&root.to_hex()).unwrap();
        assert_eq!(again.to_hex(), root.to_hex());
    }
    if let Ok(authority) = TokenAuthority::from_private_hex(text) {
        let again = TokenAuthority::from_private_hex(&authority.private_hex()).unwrap();
        assert_eq!(again.root().to_hex(), authority.root().to_hex());
    }
}

// ---------------------------------------------------------------------------------------------
// catalog_requests: what sensors, clouds, owners and administrators send the catalog.

/// The catalog's endpoints: 0 CREATE, 1 SET, 2 GET, 3 a bucket map, 4 token revocations,
/// 5 sensor revocations, 6 an owner's access request, 7 access rules, 8 a forwarded request,
/// 9 a membership change, 10 a storage request. Bodies that carry a time take it (ms) from
/// the 8 bytes before them.
pub fn catalog_requests(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    match selector % 11 {
        10 => store_request(rest),
        0 => create_flags(rest),
        1 => set_flags(rest),
        2 => get_flags(rest),
        3 => assignment(rest),
        4 => revocations(rest),
        5 => sensor_revocations(rest),
        6 => access_request(rest),
        7 => access_rules(rest),
        8 => forwarded(rest),
        _ => membership(rest),
    }
}

fn assert_request_checked(ids: &[BatchId]) {
    assert!(ids.len() <= MAX_FLAGS_PER_REQUEST);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a repeated id passed");
}

fn create_flags(data: &[u8]) {
    let (now, body) = take_u64(data);
    let Ok(req) = decode::<CreateFlagsRequest>(body) else {
        return;
    };
    assert_roundtrip(&req);
    let flags = req.flags;
    if check_request(flags.iter().map(|f| f.id), flags.len()).is_err()
        || check_ttls(&flags).is_err()
    {
        return;
    }
    let ids: Vec<BatchId> = flags.iter().map(|f| f.id).collect();
    assert_request_checked(&ids);
    assert!(flags
        .iter()
        .all(|f| f.ttl_ms >= 1 && f.ttl_ms <= MAX_TTL_MS));
    let mut table = Table::default();
    let (created, changes) = table.create(&flags, now).unwrap();
    assert_eq!(created.len(), flags.len());
    for (flag, request) in created.iter().zip(&flags) {
        assert_eq!(flag.state, FlagState::False);
        assert_eq!(flag.deadline_ms, now.saturating_add(request.ttl_ms));
    }
    table.apply(&changes);
    // CREATE is idempotent while the flags are open.
    let (again, more) = table.create(&flags, now).unwrap();
    assert_eq!(again, created);
    assert!(more.is_empty());
    // SET at the same time commits every one of them, unless one is robust: the clouds
    // decide those, and SET changes nothing.
    if let Some(robust) = flags.iter().find(|f| f.robust) {
        let e = table.set(&ids, now).unwrap_err();
        assert!(
            matches!(e, mcloud_catalog::CatalogError::DecidedByClouds(id) if id == robust.id),
            "{e}"
        );
        return;
    }
    let (set, changes) = table.set(&ids, now).unwrap();
    assert!(set.iter().all(|f| f.state == FlagState::True));
    table.apply(&changes);
    assert!(table.create(&flags, now).is_err() || flags.is_empty());
}

fn set_flags(data: &[u8]) {
    let (now, body) = take_u64(data);
    let Ok(req) = decode::<FlagIds>(body) else {
        return;
    };
    assert_roundtrip(&req);
    if check_request(req.ids.iter().copied(), req.ids.len()).is_err() {
        return;
    }
    assert_request_checked(&req.ids);
    // Every other id is known, open until `now` + 1 s.
    let mut table = Table::default();
    let known: Vec<CreateFlag> = req
        .ids
        .iter()
        .step_by(2)
        .map(|&id| CreateFlag {
            id,
            ttl_ms: 1000,
            robust: false,
        })
        .collect();
    let start = now.saturating_sub(500);
    let (_, changes) = table.create(&known, start).unwrap();
    table.apply(&changes);
    match table.set(&req.ids, now) {
        Ok((flags, changes)) => {
            assert!(req.ids.len() <= 1, "an unknown id was set");
            assert!(flags.iter().all(|f| f.state == FlagState::True));
            assert_eq!(changes.len(), flags.len());
        }
        Err(_) => assert!(req.ids.len() > 1 || now > start.saturating_add(1000)),
    }
}

fn get_flags(data: &[u8]) {
    let (now, body) = take_u64(data);
    let Ok(req) = decode::<FlagIds>(body) else {
        return;
    };
    assert_roundtrip(&req);
    let table = Table::default();
    for id in req.ids.iter().take(MAX_FLAGS_PER_REQUEST) {
        assert!(table.effective(id, now).is_none());
    }
}

fn assignment(data: &[u8]) {
    let Ok(a) = decode::<Assignment>(data) else {
        return;
    };
    assert_roundtrip(&a);
    if a.check().is_ok() {
        assert!(a.owners.len() <= raft_types::MAX_ASSIGNMENT_BUCKETS);
        assert!(a.epoch >= 1 && a.epoch <= raft_types::MAX_EPOCH);
    }
}

fn revocations(data: &[u8]) {
    let Ok(ids) = decode::<Vec<String>>(data) else {
        return;
    };
    assert_roundtrip(&ids);
    if raft_types::check_revocations(&ids).is_ok() {
        assert!(!ids.is_empty() && ids.len() <= raft_types::MAX_REVOCATIONS_PER_REQUEST);
        for id in &ids {
            assert!(!id.is_empty() && id.len() <= raft_types::MAX_REVOCATION_ID_CHARS);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}

fn sensor_revocations(data: &[u8]) {
    let Ok(ids) = decode::<Vec<u32>>(data) else {
        return;
    };
    assert_roundtrip(&ids);
    if raft_types::check_sensor_revocations(&ids).is_ok() {
        assert!(!ids.is_empty() && ids.len() <= raft_types::MAX_REVOCATIONS_PER_REQUEST);
    }
}

fn assert_rules_checked(rules: &AccessRules) {
    if rules.check().is_err() {
        return;
    }
    for name in std::iter::once(&rules.user)
        .chain(&rules.friends)
        .chain(&rules.denied_apps)
    {
        let chars = name.chars().count();
        assert!(
            (1..=MAX_NAME_CHARS).contains(&chars),
            "name of {chars} chars"
        );
    }
    assert!(rules.houses.len() <= MAX_RULE_ENTRIES);
    assert!(rules.friends.len() <= MAX_RULE_ENTRIES);
    assert!(rules.denied_apps.len() <= MAX_RULE_ENTRIES);
}

fn access_request(data: &[u8]) {
    let Ok(req) = decode::<AccessRequest>(data) else {
        return;
    };
    // As `post_access` builds the rules: user and houses from the owner's token.
    let rules = AccessRules {
        user: "owner".into(),
        houses: vec![0, 1, 2],
        friends: req.friends,
        others: req.others,
        denied_apps: req.denied_apps,
    };
    assert_rules_checked(&rules);
}

fn access_rules(data: &[u8]) {
    let Ok(rules) = decode::<AccessRules>(data) else {
        return;
    };
    assert_roundtrip(&rules);
    assert_rules_checked(&rules);
}

/// Applies `ops` at `now_ms` as one committed entry of a fresh state machine, the way every
/// replica applies the log; checks what it kept and that a snapshot restores it.
fn apply_ops(now_ms: u64, ops: Vec<Op>) {
    let mut machine = FreshMachine::new();
    let entry = raft_types::Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Batch { now_ms, ops }),
    };
    let results = runtime().block_on(machine.get().apply([entry])).unwrap();
    assert_eq!(results.len(), 1);
    assert_kept_in_bounds(machine.get());
    assert_snapshot_roundtrip(machine.get());
}

/// What an applied log may leave in partition 0's registers: nothing a check refuses.
fn assert_kept_in_bounds(machine: &StateMachine) {
    let shared = machine.shared();
    let s = state_machine::read(&shared);
    for a in s.registers.assignments.values() {
        assert!(a.check().is_ok(), "a refused bucket map was kept");
    }
    assert!(s.registers.revoked.len() <= raft_types::MAX_REVOCATIONS);
    for rules in s.registers.access.values() {
        assert!(rules.check().is_ok(), "refused access rules were kept");
    }
    // Whatever storage operations the input held, the masters' state stays one a peer's
    // snapshot check accepts.
    assert!(
        s.registers.store.check().is_ok(),
        "the storage metadata left its bounds"
    );
}

fn forwarded(data: &[u8]) {
    let (now_ms, body) = take_u64(data);
    let Ok(request) = decode::<Forwarded>(body) else {
        return;
    };
    match request {
        Forwarded::Op(op) => apply_ops(now_ms, vec![op]),
        Forwarded::Read(ids) => {
            let table = Table::default();
            for id in ids.iter().take(MAX_FLAGS_PER_REQUEST) {
                assert!(table.effective(id, now_ms).is_none());
            }
        }
        Forwarded::ReadStore(read) => read_store(&store_with_a_write(now_ms).0, &read),
        Forwarded::ReadAssignment(_) => {}
    }
}

/// A storage read answered from `masters`: whatever it asks, the answer stays bounded.
fn read_store(masters: &mcloud_store::master::Masters, read: &mcloud_store::master::StoreRead) {
    use mcloud_store::master::{StoreAnswer, StoreRead, MAX_GARBAGE_READ, MAX_HOUSES_PER_MAILBOX};
    match (read, masters.read(read)) {
        (StoreRead::Garbage(_), Ok(StoreAnswer::Garbage(sets))) => {
            assert!(sets.len() <= MAX_GARBAGE_READ)
        }
        (StoreRead::HouseOwners(_), Ok(StoreAnswer::HouseOwners(owners))) => {
            assert!(owners.len() <= MAX_HOUSES_PER_MAILBOX)
        }
        _ => {}
    }
}

/// The masters holding one write of alice's file `f` in progress, begun at `now_ms` with a
/// fixed seed (so inputs can name its id), and its plan.
fn store_with_a_write(now_ms: u64) -> (mcloud_store::master::Masters, mcloud_store::master::Begin) {
    use mcloud_store::master::{Begin, FileAccess, Masters, ObjectKey, Reader, StoreOp};
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let alice = Reader {
        user: "alice".into(),
        app: None,
    };
    let begin = Begin::draw(
        ObjectKey::file("alice", "f"),
        alice,
        40_000,
        16_384,
        2,
        vec![0, 1, 2],
        86_400,
        FileAccess::default(),
        &mut rng,
    )
    .unwrap();
    let mut masters = Masters::default();
    masters
        .apply(&StoreOp::Begin(begin.clone()), now_ms)
        .unwrap();
    (masters, begin)
}

/// An app's storage request as the masters' endpoint (`mcloud_catalog::masters`) turns it
/// into an operation or a read for user alice, applied to masters holding one write of hers
/// in progress: a refused operation changes nothing, and whatever is applied leaves a state
/// a peer's snapshot check accepts.
fn store_request(data: &[u8]) {
    use mcloud_store::master::{
        Commit, ObjectKey, Reader, RefreshCommit, Repair, StoreOp, StoreRead,
        MAX_HOUSES_PER_MAILBOX,
    };
    use mcloud_store::wire::StoreRequest;
    use rand::SeedableRng;
    let (now_ms, body) = take_u64(data);
    let Ok(request) = decode::<StoreRequest>(body) else {
        return;
    };
    let (mut masters, _) = store_with_a_write(now_ms.saturating_sub(1));
    let alice = Reader {
        user: "alice".into(),
        app: None,
    };
    let mine = |key: ObjectKey| key.or_owner("alice");
    let op = match request {
        StoreRequest::Begin(begin) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(now_ms);
            match begin.draw(alice.clone(), &mut rng) {
                Ok(begin) => StoreOp::Begin(begin),
                Err(_) => return,
            }
        }
        StoreRequest::Commit { key, id, records } => StoreOp::Commit(Commit {
            key: mine(key),
            writer: alice,
            id,
            records,
        }),
        StoreRequest::RefreshCommit { key, id, records } => StoreOp::RefreshCommit(RefreshCommit {
            key: mine(key),
            writer: alice,
            id,
            records,
        }),
        StoreRequest::Repair { key, id, records } => StoreOp::Repair(Repair {
            key: mine(key),
            writer: alice,
            id,
            records,
        }),
        StoreRequest::Delete { key } => StoreOp::Delete {
            key: mine(key),
            by: alice,
        },
        StoreRequest::SetMailboxKey { public_key } => StoreOp::SetMailboxKey {
            user: "alice".into(),
            public_key,
            houses: vec![1, 2],
        },
        StoreRequest::RefreshBegin { key, version } => {
            let read = StoreRead::RefreshChoice {
                key: mine(key),
                version,
            };
            return read_store(&masters, &read);
        }
        StoreRequest::Get { key, version } => {
            let read = StoreRead::Version {
                key: mine(key),
                reader: alice,
                version,
            };
            return read_store(&masters, &read);
        }
        StoreRequest::List { kind, owner } => {
            let read = StoreRead::List {
                kind,
                owner,
                reader: alice,
            };
            return read_store(&masters, &read);
        }
        StoreRequest::MailboxKey { user } => {
            return read_store(&masters, &StoreRead::MailboxKey(user));
        }
        StoreRequest::HouseOwners { houses } => {
            if houses.len() > MAX_HOUSES_PER_MAILBOX {
                return;
            }
            return read_store(&masters, &StoreRead::HouseOwners(houses));
        }
    };
    let before = masters.clone();
    if masters.apply(&op, now_ms).is_err() {
        assert_eq!(
            masters, before,
            "a refused storage operation changed the state"
        );
    }
    assert!(
        masters.check().is_ok(),
        "the storage metadata left its bounds"
    );
}

fn membership(data: &[u8]) {
    let Ok(change) = decode::<MembershipChange>(data) else {
        return;
    };
    let bytes = postcard::to_stdvec(&change).unwrap();
    let again: MembershipChange = decode(&bytes).unwrap();
    assert_eq!(format!("{again:?}"), format!("{change:?}"));
}

// ---------------------------------------------------------------------------------------------
// raft_messages: what one catalog voter sends another.

/// Raft RPCs between voters: 0 AppendEntries, 1 Vote, 2 a sequence of snapshot chunks (each
/// prefixed by its length, two bytes little-endian), 3 snapshot data as the state machine
/// installs it.
pub fn raft_messages(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    match selector % 4 {
        0 => append(rest),
        1 => vote(rest),
        2 => snapshot_chunks(rest),
        _ => snapshot_data(rest),
    }
}

fn assert_log_id_bounded(id: Option<&LogId>) {
    if let Some(id) = id {
        assert!(id.leader_id.term <= MAX_TERM && id.leader_id.node_id <= MAX_NODE_ID);
        assert!(id.index <= MAX_LOG_INDEX);
    }
}

fn assert_vote_bounded(vote: &Vote, from: NodeId) {
    assert!(
        vote.leader_id.term <= MAX_TERM,
        "vote term {}",
        vote.leader_id.term
    );
    assert_eq!(
        vote.leader_id.node_id, from,
        "a vote in another node's name passed"
    );
}

fn append(data: &[u8]) {
    type Append = openraft::raft::AppendEntriesRequest<TypeConfig>;
    let Ok(rpc) = decode::<Envelope<Append>>(data) else {
        return;
    };
    let now = mcloud_catalog::now_ms();
    if bounds::check_append(&rpc.body, rpc.from, now).is_err() {
        return;
    }
    let body = rpc.body;
    assert_vote_bounded(&body.vote, rpc.from);
    assert_log_id_bounded(body.prev_log_id.as_ref());
    assert_log_id_bounded(body.leader_commit.as_ref());
    let first = body.prev_log_id.map_or(0, |id| id.index + 1);
    for (i, entry) in body.entries.iter().enumerate() {
        assert_log_id_bounded(Some(entry.get_log_id()));
        assert_eq!(entry.get_log_id().index, first + i as u64, "a gap passed");
        if let openraft::EntryPayload::Normal(batch) = &entry.payload {
            assert!(
                batch.now_ms <= now + bounds::MAX_CLOCK_AHEAD_MS,
                "an entry stamped {} ms passed",
                batch.now_ms
            );
        }
    }
    if body.entries.is_empty() {
        return;
    }
    // A follower applies what the leader commits: run the entries through a state machine.
    let mut machine = FreshMachine::new();
    let n = body.entries.len();
    let results = runtime()
        .block_on(machine.get().apply(body.entries))
        .unwrap();
    assert_eq!(results.len(), n);
    assert_kept_in_bounds(machine.get());
    assert_snapshot_roundtrip(machine.get());
}

fn vote(data: &[u8]) {
    let Ok(rpc) = decode::<Envelope<openraft::raft::VoteRequest<NodeId>>>(data) else {
        return;
    };
    if bounds::check_vote(&rpc.body, rpc.from).is_ok() {
        assert_vote_bounded(&rpc.body.vote, rpc.from);
        assert_log_id_bounded(rpc.body.last_log_id.as_ref());
    }
}

fn snapshot_chunks(mut data: &[u8]) {
    let assembler = Assembler::default();
    // The bytes each (partition 0) transfer has taken so far, as the assembler must count them.
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        let (piece, rest) = data[2..].split_at(len);
        data = rest;
        let Ok(rpc) = decode::<Envelope<SnapshotChunk>>(piece) else {
            continue;
        };
        if bounds::check_snapshot(&rpc.body, rpc.from).is_err() {
            continue;
        }
        assert_vote_bounded(&rpc.body.vote, rpc.from);
        assert_log_id_bounded(rpc.body.meta.last_log_id.as_ref());
        assert!(rpc.body.meta.snapshot_id.len() <= bounds::MAX_SNAPSHOT_ID_CHARS);
        let total = rpc.body.total;
        let Ok(Some(whole)) = assembler.accept(0, rpc.from, rpc.body) else {
            continue;
        };
        assert_eq!(
            whole.data.len() as u64,
            total,
            "assembled size differs from the total"
        );
        assert!(total <= MAX_SNAPSHOT_BYTES);
        assert_eq!(assembler.last_received(0), Some(total));
        install(&whole.meta, whole.data);
    }
}

/// Installs snapshot data in a fresh state machine, as a follower does once the data passed
/// its checks; what it installs is in bounds, and a snapshot built from it restores the same
/// state again.
fn install(meta: &SnapshotMeta, data: Vec<u8>) {
    if StateMachine::check_peer_snapshot(&data, mcloud_catalog::now_ms()).is_err() {
        return;
    }
    let mut machine = FreshMachine::new();
    let installed = runtime().block_on(
        machine
            .get()
            .install_snapshot(meta, Box::new(Cursor::new(data))),
    );
    if installed.is_ok() {
        assert_kept_in_bounds(machine.get());
        assert_snapshot_roundtrip(machine.get());
    }
}

fn snapshot_data(data: &[u8]) {
    install(&SnapshotMeta::default(), data.to_vec());
}

// ---------------------------------------------------------------------------------------------
// worker_frames: what a cloud node sends its worker processes.

/// The frames a node sends a worker process over their private TLS link, served by the real
/// worker (`serve_worker`) on loopback. Selector 0: the input is the byte stream itself
/// (length-prefixed frames, as on the wire); 1: the input is a sequence of frame bodies, each
/// prefixed by its length in two bytes, which the node's side frames properly.
pub fn worker_frames(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    let (stream, frames) = if selector % 2 == 0 {
        (rest.to_vec(), None)
    } else {
        let mut stream = Vec::new();
        let mut frames = 0usize;
        let mut rest = rest;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            stream.extend_from_slice(&(len as u32).to_le_bytes());
            stream.extend_from_slice(&rest[2..2 + len]);
            rest = &rest[2 + len..];
            frames += 1;
        }
        (stream, Some(frames))
    };
    let replies = worker_link::exchange(&stream);
    if let Some(frames) = frames {
        // One reply per request, never more.
        assert!(replies <= frames, "{replies} replies to {frames} requests");
    }
}

mod worker_link {
    use rustls::{ServerConnection, StreamOwned};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    /// Buckets and window of the worker the frames go to.
    const BUCKETS: usize = 16;
    const WINDOW_SECS: u64 = 60;
    /// A reply no larger than this is what a worker of `BUCKETS` sends.
    const MAX_REPLY: usize = 1 << 30;

    struct Link {
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        client_pem: String,
    }

    fn link() -> &'static Link {
        static LINK: OnceLock<Link> = OnceLock::new();
        LINK.get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let ip = listener.local_addr().unwrap().ip().to_string();
            let link = mcloud_core::tls::PrivateLink::generate(&ip).unwrap();
            Link {
                config: link.server_config().unwrap(),
                client_pem: link.client_pem().to_string(),
                listener,
            }
        })
    }

    /// Starts a worker process's loop on a thread, connected to us over the link, sends it
    /// `stream`, closes our side and counts the reply frames it sent before it ended. A panic
    /// in the worker is a panic here.
    pub fn exchange(stream: &[u8]) -> usize {
        let link = link();
        let addr = link.listener.local_addr().unwrap().to_string();
        let pem = link.client_pem.clone();
        let worker = std::thread::spawn(move || {
            mcloud_cloud::elastic::remote::serve_worker(
                &addr,
                &pem,
                1,
                BUCKETS,
                WINDOW_SECS,
                Duration::ZERO,
            )
        });
        let (sock, _) = link.listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let tls = ServerConnection::new(link.config.clone()).unwrap();
        let mut conn = StreamOwned::new(tls, sock);
        // Errors writing are the worker leaving early (a refused frame): fine.
        let _ = conn.write_all(stream).and_then(|()| conn.flush());
        conn.conn.send_close_notify();
        let _ = conn.flush();
        let _ = conn.sock.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
        // The replies are whole frames, each of a sane size.
        let mut replies = 0;
        let mut rest = &answer[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            assert!(
                len <= MAX_REPLY && 4 + len <= rest.len(),
                "a torn reply frame"
            );
            rest = &rest[4 + len..];
            replies += 1;
        }
        assert!(rest.is_empty(), "a torn reply frame");
        replies
    }
}

// ---------------------------------------------------------------------------------------------
// config_files: what an operator writes.

/// Configuration files, read from disk by the real loaders: 0 node.toml, 1 deployment.toml,
/// 2 a disclosure policy, 3 a sensor's credentials.
pub fn config_files(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match selector % 4 {
        0 => node_config(text),
        1 => deployment(text),
        2 => disclosure(text),
        _ => sensor_credentials(text),
    }
}

/// Writes `text` where the loaders read it from (every path it names is relative to there),
/// in a directory removed when the returned guard is dropped.
fn config_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn node_config(text: &str) {
    let (_dir, path) = config_file("node.toml", text);
    let Ok(config) = crate::config::NodeConfig::load(&path) else {
        return;
    };
    assert!(
        config.catalog.is_some() || config.cloud.is_some(),
        "a node without a role"
    );
    assert!(config.data_dir.is_absolute(), "data_dir was not resolved");
    if let Some(catalog) = &config.catalog {
        assert!(catalog.partitions >= 1);
        assert!(catalog.peers.is_empty() || catalog.peers.iter().any(|p| p.id == catalog.node_id));
        assert!(catalog.credentials.is_absolute());
    }
    if let Some(cloud) = &config.cloud {
        assert!(cloud.parties >= 1 && cloud.party < cloud.parties);
        assert!(cloud.window_secs >= 1);
        assert!(cloud.catalog.ca.is_absolute());
    }
    if let Some(elastic) = &config.elastic {
        let pool = elastic.to_config(Some(PathBuf::new())).unwrap();
        assert!(pool.buckets >= 1 && pool.workers >= 1);
    }
}

fn deployment(text: &str) {
    let (_dir, path) = config_file("deployment.toml", text);
    if let Ok(d) = crate::config::Deployment::load(&path) {
        assert!(!d.clouds.is_empty());
        assert!(d.clouds.iter().all(|c| c.ca.is_absolute()));
    }
}

fn disclosure(text: &str) {
    let Ok(policy) = DisclosurePolicy::from_toml(text) else {
        return;
    };
    assert!(policy.check().is_ok());
    for (scope, rules) in [
        ("owner", &policy.owner),
        ("friend", &policy.friend),
        ("other", &policy.other),
    ] {
        assert!((1..=MAX_MIN_CONTRIBUTORS).contains(&rules.min_contributors));
        assert!((1..=MAX_STRIDE_WINDOWS).contains(&rules.stride_windows));
        assert!((1..=rules.stride_windows).contains(&rules.min_data_windows));
        assert!(rules.max_reveals <= MAX_REVEALS);
        if scope != "owner" {
            assert!(!rules.histograms && !rules.levels.contains(&GroupLevel::Plug));
        }
        if let Some(dp) = &rules.dp {
            assert!(scope != "owner", "noise in the owner's scope");
            assert!(dp.epsilon > 0.0 && dp.epsilon <= MAX_EPSILON);
            assert!(dp.budget >= dp.epsilon && dp.budget <= 1000.0 * MAX_EPSILON);
            assert!(dp.max_value >= 1 && dp.max_value <= MAX_DP_VALUE);
        }
    }
    // The canonical form reads back as the same policy, with the same hash.
    let again = DisclosurePolicy::from_toml(&policy.to_toml()).unwrap();
    assert_eq!(again, policy);
    assert_eq!(again.hash(), policy.hash());
}

fn sensor_credentials(text: &str) {
    let (dir, path) = config_file("sensor.toml", text);
    let Ok(credentials) = SensorCredentials::load(&path) else {
        return;
    };
    let copy = dir.path().join("sensor-copy.toml");
    credentials.save(&copy).unwrap();
    let again = SensorCredentials::load(&copy).unwrap();
    assert_eq!(again.scope, credentials.scope);
    assert_eq!(again.keys, credentials.keys);
}

// ---------------------------------------------------------------------------------------------
// csv_input: the DEBS 2014 data a sensor replays.

/// DEBS 2014 CSV: 0 one line (`parse_line`), 1 a whole input (`read_all`).
pub fn csv_input(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(reading) = mcloud_core::csv::parse_line(1, text) {
            assert_reading(&reading);
            // The line it stands for, written back exactly, reads as the same reading.
            let property = match reading.metric {
                Metric::Work => 0,
                Metric::Load => 1,
            };
            let g = reading.group;
            let line = format!(
                "{},{},{},{property},{},{},{}",
                reading.id,
                reading.ts,
                fixed::format(u128::from(reading.value)),
                g.plug,
                g.household,
                g.house
            );
            let again = mcloud_core::csv::parse_line(1, &line).unwrap();
            assert_eq!(again, reading);
        }
    } else if let Ok(readings) = mcloud_core::csv::read_all(rest) {
        let lines = rest.split(|&b| b == b'\n').count();
        assert!(readings.len() <= lines);
        readings.iter().for_each(assert_reading);
    }
}

fn assert_reading(reading: &Reading) {
    assert!(
        reading.value <= fixed::MAX_FIXED,
        "value {} passed",
        reading.value
    );
}

// ---------------------------------------------------------------------------------------------
// robust_reports: what a robust deployment's sensors and clouds send a cloud about reports.

pub fn robust_reports(data: &[u8]) {
    let Some((selector, rest)) = split(data) else {
        return;
    };
    match selector % 3 {
        0 => robust_upload(rest),
        1 => robust_verifier_shares(rest),
        _ => robust_finish(rest),
    }
}

/// The clouds of a fuzzed robust deployment, their key, and one honest batch of it (its
/// bodies, one per cloud): the same for every input of a run.
struct RobustFixture {
    robust: Robust,
    key: VerifyKey,
    bodies: Vec<RobustUploadRequest>,
}

const ROBUST_CLOUDS: u16 = 3;

fn robust_fixture() -> &'static RobustFixture {
    static FIXTURE: std::sync::OnceLock<RobustFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let robust = Robust::new(ROBUST_CLOUDS).unwrap();
        let readings: Vec<Reading> = (0..2u64)
            .map(|k| Reading {
                id: k,
                ts: NOW - 600 + 15 * k,
                value: 1_000 * k,
                metric: Metric::Load,
                group: group(1, 2),
            })
            .collect();
        let mut counts = vec![0; mcloud_core::histogram::BUCKETS];
        counts[3] = 2;
        let histograms = vec![PlainHistogram {
            plug: group(1, 2),
            window_start: NOW - 600,
            counts,
        }];
        let bodies = robust
            .shard_batch(BatchId::of_sensor(5), &readings, &histograms, None)
            .unwrap();
        RobustFixture {
            robust,
            key: VerifyKey([7; 32]),
            bodies,
        }
    })
}

/// A robust UPLOAD body, in the node's order (`CloudNode::robust_upload`): decode, metadata,
/// this cloud's half of verification.
fn robust_upload(data: &[u8]) {
    let Some((b, body)) = split(data) else {
        return;
    };
    let party = u16::from(b) % ROBUST_CLOUDS;
    let config = CloudConfig {
        parties: ROBUST_CLOUDS,
        party,
        ..CloudConfig::default()
    };
    let Ok(request) = decode::<RobustUploadRequest>(body) else {
        return;
    };
    assert_roundtrip(&request);
    if validate_upload(&config, &request.metadata(), NOW).is_err() {
        return;
    }
    let fixture = robust_fixture();
    let Ok(prepared) = fixture.robust.prepare(&fixture.key, party, &request) else {
        return;
    };
    assert_eq!(
        prepared.reports(),
        request.records.len() + request.histograms.len()
    );
    let shares = prepared.shares().unwrap();
    assert_eq!(shares.readings.len(), request.records.len());
    assert_eq!(shares.histograms.len(), request.histograms.len());
}

/// The leader combining the other clouds' verifier shares (what a peer answers it) with its
/// own half of the honest batch.
fn robust_verifier_shares(data: &[u8]) {
    let Ok(others) = decode::<Vec<VerifierShares>>(data) else {
        return;
    };
    let fixture = robust_fixture();
    let leader = mcloud_core::robust::party_of(fixture.bodies[0].batch_id, 0, ROBUST_CLOUDS);
    let own = fixture
        .robust
        .prepare(&fixture.key, leader, &fixture.bodies[usize::from(leader)])
        .unwrap();
    let mut all = vec![own.shares().unwrap()];
    all.extend(others);
    if let Ok(messages) = fixture.robust.combine(&own, &all) {
        assert_eq!(messages.readings.len(), fixture.bodies[0].records.len());
        assert_eq!(
            messages.histograms.len(),
            fixture.bodies[0].histograms.len()
        );
    }
}

/// A cloud finishing its half of the honest batch with the leader's word (what a leader sends).
fn robust_finish(data: &[u8]) {
    let Ok(request) = decode::<FinishRequest>(data) else {
        return;
    };
    assert_roundtrip(&request);
    let Finish::Accept(messages) = request.finish else {
        return;
    };
    let fixture = robust_fixture();
    let own = fixture
        .robust
        .prepare(&fixture.key, 1, &fixture.bodies[1])
        .unwrap();
    if let Ok((records, counts)) = fixture.robust.finish(own, &messages) {
        assert_eq!(records.len(), fixture.bodies[1].records.len());
        assert_eq!(
            counts.len(),
            fixture.bodies[1].histograms.len() * mcloud_core::histogram::BUCKETS
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

/// A target's body.
pub type Body = fn(&[u8]);

/// The targets, by name, with their bodies.
pub const TARGETS: &[(&str, Body)] = &[
    ("cloud_requests", cloud_requests),
    ("catalog_requests", catalog_requests),
    ("raft_messages", raft_messages),
    ("worker_frames", worker_frames),
    ("credentials", credentials),
    ("config_files", config_files),
    ("csv_input", csv_input),
    ("robust_reports", robust_reports),
];

fn with(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(body);
    out
}

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap()
}

fn group(house: u32, plug: u32) -> GroupKey {
    GroupKey {
        house,
        household: 0,
        plug,
    }
}

/// Valid inputs of every kind each target decodes: `(target, name, bytes)`. `repo` is the
/// repository root (for the example configuration files), `csv` a few lines of DEBS 2014 CSV.
pub fn seeds(repo: &Path, csv: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };

    // cloud_requests
    let sensor = 5u32;
    let readings: Vec<Reading> = (0..4u64)
        .map(|k| Reading {
            id: k,
            ts: NOW - 600 + 15 * k,
            value: 1000 * k,
            metric: if k % 2 == 0 {
                Metric::Load
            } else {
                Metric::Work
            },
            group: group(0, k as u32),
        })
        .collect();
    let histograms = vec![PlainHistogram {
        plug: group(0, 1),
        window_start: NOW - NOW % 30 - 600,
        counts: vec![1; mcloud_core::histogram::BUCKETS],
    }];
    for (i, id) in [(sensor as u128) << 96, ((sensor as u128) << 96) | 1]
        .into_iter()
        .enumerate()
    {
        let bodies = split_batch(BatchId(id), &[3; 32], 3, &readings, &histograms).unwrap();
        for (party, body) in bodies.iter().enumerate() {
            // Config byte: 3 parties (b & 3 = 2), this party.
            let config = 2 | ((party as u8) << 2);
            let mut bytes = vec![0, config];
            bytes.extend(enc(body));
            add("cloud_requests", &format!("upload-{i}-party{party}"), bytes);
        }
    }
    let single = split_batch(BatchId(7 << 96), &[1; 32], 1, &readings[..1], &[]).unwrap();
    let mut bytes = vec![0, 0];
    bytes.extend(enc(&single[0]));
    add("cloud_requests", "upload-single-party", bytes);
    for (name, req) in [
        (
            "watermark",
            WatermarkRequest {
                ts: NOW - 60,
                end_of_stream: false,
            },
        ),
        (
            "watermark-end",
            WatermarkRequest {
                ts: NOW,
                end_of_stream: true,
            },
        ),
    ] {
        add("cloud_requests", name, with(1, &enc(&req)));
    }
    add(
        "cloud_requests",
        "compute",
        with(2, b"from=1699999200&to=1700000400&level=house"),
    );
    add("cloud_requests", "compute-empty", with(2, b""));
    add(
        "cloud_requests",
        "range",
        with(3, b"\x3bfrom=1699999200&to=1700000400&histograms=true"),
    );
    let specs = vec![
        RangeSpec {
            from: NOW - 3600,
            to: NOW,
            histograms: false,
        },
        RangeSpec {
            from: 0,
            to: 60,
            histograms: true,
        },
    ];
    let mut bytes = vec![4, 59];
    bytes.extend(enc(&specs));
    add("cloud_requests", "ranges", bytes);
    add(
        "cloud_requests",
        "audit",
        with(5, b"user=alice&app=meter&house=3&since=1700000000&limit=10"),
    );

    // credentials
    let challenge = issuer().challenge(NOW - 1);
    add("credentials", "challenge", with(0, &enc(&challenge)));
    let scope = SensorScope {
        sensor: 7,
        house: Some(1),
        plugs: Some(vec![1, 2]),
    };
    let key = party_secret().sensor_key(&scope);
    let request = SessionRequest::answer(scope.clone(), challenge.clone(), &key);
    add("credentials", "session-request", with(1, &enc(&request)));
    let gateway = SensorScope {
        sensor: 1,
        house: None,
        plugs: None,
    };
    let gateway_request = SessionRequest::answer(
        gateway.clone(),
        challenge,
        &party_secret().sensor_key(&gateway),
    );
    add(
        "credentials",
        "session-request-gateway",
        with(1, &enc(&gateway_request)),
    );
    let token = issuer().open(&request, NOW).unwrap();
    add(
        "credentials",
        "session-header",
        with(2, token.to_header().as_bytes()),
    );
    let owner = authority()
        .issue_owner("owner", &[0, 1, 2], NOW + 3600)
        .unwrap();
    let app = |b: u8, token: &AppToken| [vec![3, b], token.0.as_bytes().to_vec()].concat();
    add("credentials", "app-owner", app(0, &owner));
    let collector = authority()
        .issue_collector("collector", NOW + 3600)
        .unwrap();
    add("credentials", "app-collector", app(1, &collector));
    let narrowed = owner
        .attenuate(
            &authority().root(),
            &Attenuation {
                app: Some("meter".into()),
                houses: Some(vec![1]),
                plugs: Some(vec![4]),
                metrics: Some(vec![Metric::Load]),
                queries: Some(vec![QueryKind::Range]),
                levels: Some(vec![GroupLevel::Plug]),
                expires: Some(NOW + 60),
            },
        )
        .unwrap();
    // Range (1) at plug level (2): 1 + 3 * 2.
    add("credentials", "app-narrowed", app(7, &narrowed));
    let spec = TokenSpec {
        houses: vec![0, 1, 2],
        expires: NOW + 3600,
        narrowings: vec![Narrowing {
            app: Some("meter".into()),
            houses: Some(vec![1, 2, 9]),
            plugs: Some(vec![4]),
            metrics: Some(vec![Metric::Load]),
            queries: Some(vec![0, 1]),
            levels: Some(vec![0, 2]),
            expires: Some(NOW + 60),
        }],
        query: 1,
        level: 2,
        now_offset: 10,
    };
    add("credentials", "token-spec", with(4, &enc(&spec)));
    add(
        "credentials",
        "secret-hex",
        with(5, PARTY_SECRET.as_bytes()),
    );
    add(
        "credentials",
        "root-hex",
        with(5, authority().root().to_hex().as_bytes()),
    );

    // catalog_requests
    let at = |now: u64, body: Vec<u8>| [now.to_le_bytes().to_vec(), body].concat();
    let now_ms = NOW * 1000;
    let ids: Vec<BatchId> = (0..3u128).map(|i| BatchId((5 << 96) | i)).collect();
    let create = CreateFlagsRequest {
        flags: ids
            .iter()
            .map(|&id| CreateFlag {
                id,
                ttl_ms: 30_000,
                robust: false,
            })
            .collect(),
    };
    add(
        "catalog_requests",
        "create",
        with(0, &at(now_ms, enc(&create))),
    );
    let flag_ids = FlagIds { ids: ids.clone() };
    add(
        "catalog_requests",
        "set",
        with(
            1,
            &at(
                now_ms,
                enc(&FlagIds {
                    ids: ids[..1].to_vec(),
                }),
            ),
        ),
    );
    add(
        "catalog_requests",
        "get",
        with(2, &at(now_ms, enc(&flag_ids))),
    );
    let map = Assignment {
        epoch: 3,
        owners: vec![0, 1, 0, 1],
    };
    add("catalog_requests", "assignment", with(3, &enc(&map)));
    let revoked = vec!["ab".repeat(32), "0123456789abcdef".into()];
    add("catalog_requests", "revocations", with(4, &enc(&revoked)));
    add(
        "catalog_requests",
        "sensor-revocations",
        with(5, &enc(&vec![7u32, 9])),
    );
    let access = AccessRequest {
        friends: vec!["bob".into()],
        others: true,
        denied_apps: vec!["spy".into()],
    };
    add("catalog_requests", "access-request", with(6, &enc(&access)));
    let rules = AccessRules {
        user: "alice".into(),
        houses: vec![0, 1],
        friends: vec!["bob".into()],
        others: false,
        denied_apps: vec![],
    };
    add("catalog_requests", "access-rules", with(7, &enc(&rules)));
    {
        use mcloud_store::master::{FileAccess, ObjectKey};
        use mcloud_store::packet::PacketRecord;
        use mcloud_store::wire::{BeginRequest, StoreRequest, Target};
        let (_, begin) = store_with_a_write(now_ms);
        let records = (0..begin.ciphers.len() as u32)
            .flat_map(|packet| {
                let (cipher, key) = (begin.ciphers[packet as usize], begin.secret.id);
                [0, 1].map(|source| PacketRecord {
                    packet,
                    sub: 0,
                    source,
                    cipher,
                    key,
                })
            })
            .collect();
        let requests = [
            (
                "store-begin",
                StoreRequest::Begin(BeginRequest {
                    target: Target::File { name: "g".into() },
                    len: 100_000,
                    packet_bytes: 16_384,
                    replicas: 2,
                    sources: vec![0, 1, 2],
                    lifetime_secs: 3600,
                    access: FileAccess::default(),
                }),
            ),
            (
                "store-commit",
                StoreRequest::Commit {
                    key: ObjectKey::file("", "f"),
                    id: begin.id,
                    records,
                },
            ),
            (
                "store-house-owners",
                StoreRequest::HouseOwners {
                    houses: vec![1, 2, 3],
                },
            ),
        ];
        for (name, request) in requests {
            add(
                "catalog_requests",
                name,
                with(10, &at(now_ms, enc(&request))),
            );
        }
    }
    let ops = [
        ("create", Op::Create(create.flags.clone())),
        ("set", Op::Set(ids.clone())),
        (
            "assign",
            Op::Assign {
                party: 1,
                assignment: map.clone(),
            },
        ),
        ("revoke", Op::Revoke(revoked.clone())),
        ("revoke-sensors", Op::RevokeSensors(vec![3])),
        ("set-access", Op::SetAccess(rules.clone())),
    ];
    for (name, op) in &ops {
        add(
            "catalog_requests",
            &format!("forwarded-{name}"),
            with(8, &at(now_ms, enc(&Forwarded::Op(op.clone())))),
        );
    }
    add(
        "catalog_requests",
        "forwarded-read",
        with(8, &at(now_ms, enc(&Forwarded::Read(ids.clone())))),
    );
    add(
        "catalog_requests",
        "forwarded-read-map",
        with(8, &at(0, enc(&Forwarded::ReadAssignment(1)))),
    );
    let peer = raft_types::Peer {
        url: "https://127.0.0.1:7001".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----".into(),
    };
    add(
        "catalog_requests",
        "membership-add",
        with(9, &enc(&MembershipChange::AddVoter { id: 2, peer })),
    );
    add(
        "catalog_requests",
        "membership-remove",
        with(9, &enc(&MembershipChange::Remove { id: 3 })),
    );

    // raft_messages
    let log_id = |term, node, index| LogId::new(CommittedLeaderId::new(term, node), index);
    let entries: Vec<raft_types::Entry> = ops
        .iter()
        .enumerate()
        .map(|(i, (_, op))| raft_types::Entry {
            log_id: log_id(2, 1, 5 + i as u64),
            payload: EntryPayload::Normal(Batch {
                now_ms,
                ops: vec![op.clone()],
            }),
        })
        .chain(std::iter::once(raft_types::Entry {
            log_id: log_id(2, 1, 5 + ops.len() as u64),
            payload: EntryPayload::Normal(Batch {
                now_ms: now_ms + 60_000,
                ops: vec![],
            }),
        }))
        .collect();
    let append = Envelope {
        from: 1,
        body: openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 1, 4)),
            entries,
            leader_commit: Some(log_id(2, 1, 4)),
        },
    };
    add("raft_messages", "append", with(0, &enc(&append)));
    let heartbeat = Envelope {
        from: 1,
        body: openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            entries: vec![raft_types::Entry {
                log_id: log_id(2, 1, 0),
                payload: EntryPayload::Blank,
            }],
            leader_commit: None,
        },
    };
    add("raft_messages", "append-blank", with(0, &enc(&heartbeat)));
    let vote = Envelope {
        from: 2,
        body: openraft::raft::VoteRequest::<NodeId> {
            vote: Vote::new(3, 2),
            last_log_id: Some(log_id(2, 1, 9)),
        },
    };
    add("raft_messages", "vote", with(1, &enc(&vote)));
    // Snapshot data of a state machine that applied the append above.
    let data = {
        let mut machine = FreshMachine::new();
        runtime()
            .block_on(machine.get().apply(append.body.entries.clone()))
            .unwrap();
        let snapshot = runtime().block_on(machine.get().build_snapshot()).unwrap();
        snapshot.snapshot.into_inner()
    };
    add("raft_messages", "snapshot-data", with(3, &data));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 1, 11)),
        snapshot_id: "2-11".into(),
        ..SnapshotMeta::default()
    };
    let mut chunks = vec![2u8];
    let half = data.len() / 2;
    for (offset, piece) in [(0, &data[..half]), (half, &data[half..])] {
        let chunk = Envelope {
            from: 1,
            body: SnapshotChunk {
                vote: Vote::new_committed(2, 1),
                meta: meta.clone(),
                offset: offset as u64,
                total: data.len() as u64,
                data: piece.to_vec(),
            },
        };
        let bytes = enc(&chunk);
        chunks.extend((bytes.len() as u16).to_le_bytes());
        chunks.extend(bytes);
    }
    add("raft_messages", "snapshot-chunks", chunks);

    // worker_frames: requests as the node's proxy frames them (see `remote::Request`, whose
    // variants are, in order: Process, Decide, Release, Install, Take, Forget, Checkpoint,
    // Stop). Built by hand: the type is private to the elastic module.
    let batch = expand(
        split_batch(BatchId(9 << 96), &[2; 32], 1, &readings, &histograms)
            .unwrap()
            .remove(0),
    )
    .unwrap();
    let mut process = vec![0u8];
    process.extend(enc(&batch));
    process.extend(enc(&vec![1u32; 16]));
    let mut decide = vec![1u8];
    decide.extend(enc(&(BatchId(9 << 96), true)));
    let take = [vec![4u8], enc(&vec![NOW - 600 - (NOW - 600) % 60])].concat();
    let frames: Vec<Vec<u8>> = vec![process, decide, vec![2, 3], take, vec![6], vec![7]];
    let mut structured = vec![1u8];
    let mut raw = vec![0u8];
    for f in &frames {
        structured.extend((f.len() as u16).to_le_bytes());
        structured.extend(f);
        raw.extend((f.len() as u32).to_le_bytes());
        raw.extend(f);
    }
    add("worker_frames", "session", structured);
    add("worker_frames", "session-raw", raw);

    // config_files
    for (name, selector) in [
        ("node0.toml", 0u8),
        ("node1.toml", 0),
        ("node3.toml", 0),
        ("deployment.toml", 1),
        ("disclosure.toml", 2),
    ] {
        if let Ok(text) = std::fs::read(repo.join("examples/local").join(name)) {
            add("config_files", name, with(selector, &text));
        }
    }
    let credentials = SensorCredentials {
        scope: scope.clone(),
        keys: vec![key.clone(), party_secret().sensor_key(&gateway)],
    };
    let dir = scratch();
    let copy = dir.path().join("sensor.toml");
    credentials.save(&copy).unwrap();
    add(
        "config_files",
        "sensor.toml",
        with(3, &std::fs::read(&copy).unwrap()),
    );

    // robust_reports
    let fixture = robust_fixture();
    let id = fixture.bodies[0].batch_id;
    let mut prepared = Vec::new();
    for (party, body) in fixture.bodies.iter().enumerate() {
        let mut bytes = vec![0, party as u8];
        bytes.extend(enc(body));
        add("robust_reports", &format!("upload-party{party}"), bytes);
        prepared.push(
            fixture
                .robust
                .prepare(&fixture.key, party as u16, body)
                .unwrap(),
        );
    }
    let shares: Vec<VerifierShares> = (0..usize::from(ROBUST_CLOUDS))
        .map(|agg| {
            prepared[usize::from(mcloud_core::robust::party_of(id, agg, ROBUST_CLOUDS))]
                .shares()
                .unwrap()
        })
        .collect();
    add(
        "robust_reports",
        "verifier-shares",
        with(1, &enc(&shares[1..].to_vec())),
    );
    let leader = usize::from(mcloud_core::robust::party_of(id, 0, ROBUST_CLOUDS));
    let messages = fixture.robust.combine(&prepared[leader], &shares).unwrap();
    for (name, finish) in [
        ("finish-accept", Finish::Accept(messages)),
        ("finish-reject", Finish::Reject("a report failed".into())),
    ] {
        let request = FinishRequest {
            batch_id: id,
            finish,
        };
        add("robust_reports", name, with(2, &enc(&request)));
    }

    // csv_input
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    if let Some(first) = lines.next() {
        add("csv_input", "line", with(0, first.as_bytes()));
    }
    add("csv_input", "lines", with(1, csv.as_bytes()));
    add(
        "csv_input",
        "line-example",
        with(0, b"2,1377986401,19.927,1,11,0,0"),
    );
    out
}
