//! Capability tokens for apps: a house owner's apps and the deployment's analytics collector.
//!
//! Tokens are biscuits signed under one root key, so every cloud verifies them offline and any
//! holder can narrow one before handing it on, without asking the authority. The authority
//! block says who the token is for (`user`), which houses it covers (`house(n)` facts, or
//! `all_houses(true)`) and until when (`expires` plus a `time` check). An attenuation block
//! carries checks on the request's `query` and `level`, its own expiry check, an optional
//! `app` name and an optional `houses({...})` set.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use biscuit_auth::builder::{self as dl, Algorithm, BlockBuilder, Convert, Fact, Term};
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::error::{FailedCheck, Format, Logic, Token as BiscuitError};
use biscuit_auth::format::{convert::proto_fact_to_token_fact, schema::SnapshotBlock};
use biscuit_auth::{Authorizer, AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair};
use biscuit_auth::{PrivateKey, PublicKey, UnverifiedBiscuit};
use serde::{Deserialize, Serialize};

use crate::reading::GroupLevel;

/// Tokens come from hostile callers: both bounds hold before any signature is checked or any
/// Datalog runs, so no caller can make a cloud verify hundreds of signatures.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
const MAX_BLOCKS: usize = 32;

/// What an app may ask a cloud for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueryKind {
    Compute,
    Range,
    Histograms,
}

impl QueryKind {
    fn name(self) -> &'static str {
        match self {
            QueryKind::Compute => "compute",
            QueryKind::Range => "range",
            QueryKind::Histograms => "histograms",
        }
    }
}

/// The deployment's token authority: holds the root key pair (ed25519). Offline once tokens are issued.
pub struct TokenAuthority {
    keys: KeyPair,
}

impl TokenAuthority {
    pub fn generate() -> TokenAuthority {
        let keys = KeyPair::new_with_algorithm(Algorithm::Ed25519);
        TokenAuthority { keys }
    }

    pub fn from_private_hex(hex: &str) -> Result<TokenAuthority, AppTokenError> {
        let key = PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
            .map_err(|e| AppTokenError::Issue(format!("bad root private key: {e}")))?;
        let keys = KeyPair::from(&key);
        Ok(TokenAuthority { keys })
    }

    /// Secret: whoever holds it can mint tokens for every house.
    pub fn private_hex(&self) -> String {
        self.keys.private().to_bytes_hex()
    }

    pub fn root(&self) -> TokenRoot {
        let key = self.keys.public();
        TokenRoot { key }
    }

    /// A house owner's token: user `user` may read the houses `houses` (every level, every query kind) until `expires` (Unix seconds).
    pub fn issue_owner(
        &self,
        user: &str,
        houses: &[u32],
        expires: u64,
    ) -> Result<AppToken, AppTokenError> {
        let owned = houses.iter().map(|h| dl::fact("house", &[house_term(*h)]));
        self.issue(user, owned.collect(), expires)
    }

    /// The deployment's analytics collector: every house, every query kind, until `expires`.
    pub fn issue_collector(&self, name: &str, expires: u64) -> Result<AppToken, AppTokenError> {
        self.issue(
            name,
            vec![dl::fact("all_houses", &[dl::boolean(true)])],
            expires,
        )
    }

    fn issue(&self, user: &str, houses: Vec<Fact>, at: u64) -> Result<AppToken, AppTokenError> {
        if user.starts_with(ROLE_USER_PREFIX) {
            return Err(AppTokenError::Issue(format!(
                "user name {user:?} starts with {ROLE_USER_PREFIX:?}, which names the deployment's own roles"
            )));
        }
        // Names go in as terms of built facts, never through Datalog source, so no name can
        // inject facts or checks.
        let user = dl::fact("user", &[dl::string(user)]);
        let mut builder = expiry(BlockBuilder::new().fact(user)?, at)?;
        builder.facts.extend(houses);
        let token = Biscuit::builder().merge(builder).build(&self.keys)?;
        Ok(AppToken(token.to_base64()?))
    }
}

/// Names starting with this belong to the deployment's own roles (a cloud keeping its archive
/// in encrypted storage is user `@cloud-1`): no token names such a user, so no app can pass
/// for one.
pub const ROLE_USER_PREFIX: char = '@';

/// The root public key every cloud holds to verify tokens offline.
#[derive(Clone)]
pub struct TokenRoot {
    key: PublicKey,
}

impl TokenRoot {
    pub fn from_hex(hex: &str) -> Result<TokenRoot, AppTokenError> {
        let key = PublicKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
            .map_err(|e| AppTokenError::Malformed(format!("bad root public key: {e}")))?;
        Ok(TokenRoot { key })
    }

    pub fn to_hex(&self) -> String {
        self.key.to_bytes_hex()
    }
}

/// A token as it travels (biscuit base64url, the value of `Authorization: Bearer <token>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppToken(pub String);

/// What a holder narrows a token to when handing it on; `None` keeps what the token already allows.
#[derive(Clone, Debug, Default)]
pub struct Attenuation {
    pub app: Option<String>,
    pub houses: Option<Vec<u32>>,
    /// Plug ids (within a house); a token narrowed to plugs sees those plugs' own groups only,
    /// never a house or household aggregate that other plugs are part of.
    pub plugs: Option<Vec<u32>>,
    pub metrics: Option<Vec<crate::reading::Metric>>,
    pub queries: Option<Vec<QueryKind>>,
    pub levels: Option<Vec<GroupLevel>>,
    pub expires: Option<u64>,
}

impl AppToken {
    /// Appends a block of checks (offline, no key needed beyond verifying the chain with `root`). Attenuation can only narrow: checks are ANDed.
    pub fn attenuate(
        &self,
        root: &TokenRoot,
        narrow: &Attenuation,
    ) -> Result<AppToken, AppTokenError> {
        let token = verify(&self.0, root)?;
        if token.block_count() >= MAX_BLOCKS {
            let why = format!("already {MAX_BLOCKS} blocks, the most a cloud accepts");
            return Err(AppTokenError::Issue(why));
        }
        let mut block = BlockBuilder::new();
        if let Some(app) = &narrow.app {
            block = block.fact(dl::fact("app", &[dl::string(app)]))?;
        }
        if let Some(houses) = &narrow.houses {
            let set = houses.iter().map(|h| house_term(*h)).collect();
            block = block.fact(dl::fact("houses", &[Term::Set(set)]))?;
        }
        if let Some(plugs) = &narrow.plugs {
            let set = plugs.iter().map(|p| house_term(*p)).collect();
            block = block.fact(dl::fact("plugs", &[Term::Set(set)]))?;
        }
        if let Some(metrics) = &narrow.metrics {
            let set = metrics.iter().map(|m| dl::string(m.name())).collect();
            block = block.fact(dl::fact("metrics", &[Term::Set(set)]))?;
        }
        if let Some(queries) = &narrow.queries {
            block = one_of(block, "query", queries.iter().map(|q| q.name()))?;
        }
        if let Some(levels) = &narrow.levels {
            block = one_of(block, "level", levels.iter().map(|l| l.name()))?;
        }
        if let Some(expires) = narrow.expires {
            block = expiry(block, expires)?;
        }
        Ok(AppToken(token.append(block)?.to_base64()?))
    }

    /// The token's revocation identifiers (hex), one per block: revoking any of them revokes the token and every token derived from it after that block.
    pub fn revocation_ids(&self, root: &TokenRoot) -> Result<Vec<String>, AppTokenError> {
        Ok(revocation_ids(&verify(&self.0, root)?))
    }
}

/// One request as a cloud sees it.
#[derive(Clone, Debug)]
pub struct AppRequest {
    pub now: u64,
    pub query: QueryKind,
    pub level: GroupLevel,
}

/// What the token grants for that request; the cloud filters its answer to `houses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    pub app: Option<String>,
    pub houses: HouseScope,
    pub revocation_ids: Vec<String>,
    /// The earliest expiry any block states, if any.
    pub expires: Option<u64>,
    /// The plugs the token is narrowed to (`None`: every plug of its houses).
    pub plugs: Option<BTreeSet<u32>>,
    /// The metrics the token is narrowed to (`None`: every metric).
    pub metrics: Option<BTreeSet<crate::reading::Metric>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HouseScope {
    All,
    Only(BTreeSet<u32>),
}

impl HouseScope {
    pub fn allows(&self, house: u32) -> bool {
        match self {
            HouseScope::All => true,
            HouseScope::Only(houses) => houses.contains(&house),
        }
    }
}

/// Verifies `token` (signature chain under `root`, every block's checks against the request, expiry against `request.now`), refuses it if any of its revocation ids satisfies `is_revoked`, and returns what it grants.
pub fn authorize(
    token: &str,
    root: &TokenRoot,
    request: &AppRequest,
    is_revoked: impl Fn(&str) -> bool,
) -> Result<Grant, AppTokenError> {
    let token = verify(token, root)?;
    let ids = revocation_ids(&token);
    if let Some(id) = ids.iter().find(|id| is_revoked(id)) {
        return Err(AppTokenError::Revoked(id.clone()));
    }
    let mut authorizer = authorizer(&token, request)
        .map_err(|e| AppTokenError::Malformed(format!("cannot load the token's blocks: {e}")))?;
    let (mut grant, expires) = read_grant(&block_facts(&authorizer)?)?;
    let now = request.now;
    if let Some(expired) = expires.filter(|at| now > *at) {
        return Err(AppTokenError::Expired { expired, now });
    }
    authorizer.authorize().map_err(|e| refusal(e, request))?;
    grant.revocation_ids = ids;
    grant.expires = expires;
    Ok(grant)
}

#[derive(Debug, thiserror::Error)]
pub enum AppTokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired at {expired} (now {now})")]
    Expired { expired: u64, now: u64 },
    #[error("token revoked (revocation id {0})")]
    Revoked(String),
    #[error("request outside the token's scope: {0}")]
    OutOfScope(String),
    #[error("cannot build token: {0}")]
    Issue(String),
}

impl AppTokenError {
    pub fn code(&self) -> &'static str {
        match self {
            AppTokenError::Malformed(_) => "token_malformed",
            AppTokenError::Expired { .. } => "token_expired",
            AppTokenError::Revoked(_) => "token_revoked",
            AppTokenError::OutOfScope(_) => "token_out_of_scope",
            AppTokenError::Issue(_) => "token_issue",
        }
    }
}

/// Builder failures reach `?` only while issuing or attenuating; verification maps its own.
impl From<BiscuitError> for AppTokenError {
    fn from(e: BiscuitError) -> Self {
        AppTokenError::Issue(e.to_string())
    }
}

fn house_term(house: u32) -> Term {
    dl::int(i64::from(house))
}

/// The `expires` fact only lets a cloud tell an expired token from one used out of scope; the
/// check is what enforces the expiry.
fn expiry(block: BlockBuilder, at: u64) -> Result<BlockBuilder, BiscuitError> {
    let block = block.fact(dl::fact("expires", &[Term::Date(at)]))?;
    let params = HashMap::from([("at".to_string(), Term::Date(at))]);
    block.code_with_params("check if time($t), $t <= {at}", params, HashMap::new())
}

/// `what` is one of this module's predicate names; the allowed values go in as a parameter.
fn one_of<'a>(
    block: BlockBuilder,
    what: &str,
    allowed: impl Iterator<Item = &'a str>,
) -> Result<BlockBuilder, BiscuitError> {
    let set = Term::Set(allowed.map(dl::string).collect());
    let params = HashMap::from([("allowed".to_string(), set)]);
    let source = format!("check if {what}($v), {{allowed}}.contains($v)");
    block.code_with_params(source, params, HashMap::new())
}

fn authorizer(token: &Biscuit, request: &AppRequest) -> Result<Authorizer, BiscuitError> {
    // The default 1 ms budget is wall-clock time and trips on a loaded machine; the bounded
    // token size and the fact and iteration limits still bound the work.
    let max_time = Duration::from_millis(50);
    AuthorizerBuilder::new()
        .set_limits(AuthorizerLimits {
            max_time,
            ..Default::default()
        })
        .fact(dl::fact("time", &[Term::Date(request.now)]))?
        .fact(dl::fact("query", &[dl::string(request.query.name())]))?
        .fact(dl::fact("level", &[dl::string(request.level.name())]))?
        // The token's own checks decide; nothing else has to hold.
        .policy("allow if true")?
        .build(token)
}

fn verify(token: &str, root: &TokenRoot) -> Result<Biscuit, AppTokenError> {
    let malformed = |why: String| Err(AppTokenError::Malformed(why));
    if token.len() > MAX_TOKEN_BYTES {
        let len = token.len();
        return malformed(format!(
            "{len} bytes, more than the {MAX_TOKEN_BYTES} allowed"
        ));
    }
    let unverified = match UnverifiedBiscuit::from_base64(token) {
        Ok(unverified) => unverified,
        Err(e) => return malformed(format!("not a biscuit token: {e}")),
    };
    let blocks = unverified.block_count();
    if blocks > MAX_BLOCKS {
        return malformed(format!(
            "{blocks} blocks, more than the {MAX_BLOCKS} allowed"
        ));
    }
    // Holders append their own blocks, never a third party's; refusing those keeps
    // `read_grant`'s per-block reading the whole story.
    let third_party = unverified.external_public_keys();
    if third_party.iter().any(Option::is_some) {
        return malformed("third-party blocks are not accepted".into());
    }
    match unverified.verify(root.key) {
        Ok(token) => Ok(token),
        Err(e) => malformed(format!("signatures do not verify under the root key: {e}")),
    }
}

fn revocation_ids(token: &Biscuit) -> Vec<String> {
    let ids = token.revocation_identifiers();
    ids.iter().map(hex::encode).collect()
}

/// The facts each block declares, in block order (the authority first). Biscuit's queries
/// either trust only the authority block or merge every block without saying which block a
/// fact came from; narrowing houses needs to know, since a later block could otherwise add
/// facts that widen an earlier block's set. The authorizer's snapshot keeps blocks apart.
fn block_facts(authorizer: &Authorizer) -> Result<Vec<Vec<Fact>>, AppTokenError> {
    let malformed = |e: Format| AppTokenError::Malformed(e.to_string());
    let world = authorizer.snapshot().map_err(malformed)?.world;
    let symbols = SymbolTable::from(world.symbols).map_err(malformed)?;
    let block = |b: &SnapshotBlock| -> Result<Vec<Fact>, Format> {
        let read = |f| Fact::convert_from(&proto_fact_to_token_fact(f)?, &symbols);
        b.facts.iter().map(read).collect()
    };
    let blocks = world.blocks.iter();
    blocks.map(|b| block(b).map_err(malformed)).collect()
}

/// What the blocks grant beyond their checks (revocation ids left empty), and the earliest
/// expiry any block states: a forged later `expires` can only shorten the token's life.
fn read_grant(blocks: &[Vec<Fact>]) -> Result<(Grant, Option<u64>), AppTokenError> {
    let malformed = |why: &str| AppTokenError::Malformed(why.into());
    let (authority, attenuations) = blocks.split_first().ok_or(malformed("no authority"))?;
    let users: Vec<_> = named(authority, "user").filter_map(string).collect();
    let [user] = users.as_slice() else {
        return Err(malformed("the authority block names no single user"));
    };
    let owned = named(authority, "house").filter_map(|t| t.first().and_then(house));
    let mut houses = HouseScope::Only(owned.collect());
    if named(authority, "all_houses").any(|t| *t == [Term::Bool(true)]) {
        houses = HouseScope::All;
    }
    let mut app = None;
    let mut plugs: Option<BTreeSet<u32>> = None;
    let mut metrics: Option<BTreeSet<crate::reading::Metric>> = None;
    for block in attenuations {
        // Plugs and metrics narrow like houses: each block's set intersects what was allowed.
        for terms in named(block, "plugs") {
            let set: BTreeSet<u32> = match terms {
                [Term::Set(set)] => set.iter().filter_map(house).collect(),
                _ => BTreeSet::new(),
            };
            plugs = Some(match plugs {
                None => set,
                Some(had) => &had & &set,
            });
        }
        for terms in named(block, "metrics") {
            let set: BTreeSet<crate::reading::Metric> = match terms {
                [Term::Set(set)] => set
                    .iter()
                    .filter_map(|t| match t {
                        Term::Str(name) => crate::reading::Metric::ALL
                            .into_iter()
                            .find(|m| m.name() == name),
                        _ => None,
                    })
                    .collect(),
                _ => BTreeSet::new(),
            };
            metrics = Some(match metrics {
                None => set,
                Some(had) => &had & &set,
            });
        }
        // A block's houses only intersect, so no block can add a house; a `houses` fact that
        // is not a set of house numbers narrows to nothing.
        for terms in named(block, "houses") {
            let set: BTreeSet<u32> = match terms {
                [Term::Set(set)] => set.iter().filter_map(house).collect(),
                _ => BTreeSet::new(),
            };
            houses = match houses {
                HouseScope::All => HouseScope::Only(set),
                HouseScope::Only(had) => HouseScope::Only(&had & &set),
            };
        }
        app = named(block, "app").filter_map(string).last().or(app);
    }
    let dates = blocks.iter().flat_map(|b| named(b, "expires"));
    let expires = dates.filter_map(|t| match t {
        [Term::Date(at)] => Some(*at),
        _ => None,
    });
    let user = user.clone();
    let grant = Grant {
        user,
        app,
        houses,
        revocation_ids: Vec::new(),
        expires: None,
        plugs,
        metrics,
    };
    Ok((grant, expires.min()))
}

fn named<'a>(block: &'a [Fact], name: &'a str) -> impl Iterator<Item = &'a [Term]> + 'a {
    let facts = block.iter().filter(move |f| f.predicate.name == name);
    facts.map(|f| f.predicate.terms.as_slice())
}

fn string(terms: &[Term]) -> Option<String> {
    match terms {
        [Term::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

fn house(term: &Term) -> Option<u32> {
    match term {
        Term::Integer(n) => u32::try_from(*n).ok(),
        _ => None,
    }
}

fn refusal(e: BiscuitError, request: &AppRequest) -> AppTokenError {
    let checks = match e {
        BiscuitError::FailedLogic(Logic::Unauthorized { checks, .. })
        | BiscuitError::FailedLogic(Logic::NoMatchingPolicy { checks }) => checks,
        other => return AppTokenError::Malformed(format!("cannot evaluate: {other}")),
    };
    let (level, query) = (request.level.name(), request.query.name());
    // The predicate a failed check reads says, in words, what it restricts.
    let reason = |check: &FailedCheck| match check {
        FailedCheck::Block(c) if c.rule.contains("level(") => {
            format!("level {level} is not allowed (block {})", c.block_id)
        }
        FailedCheck::Block(c) if c.rule.contains("query(") => {
            format!("query kind {query} is not allowed (block {})", c.block_id)
        }
        FailedCheck::Block(c) => format!("check `{}` of block {} failed", c.rule, c.block_id),
        FailedCheck::Authorizer(c) => format!("check `{}` failed", c.rule),
    };
    AppTokenError::OutOfScope(checks.iter().map(reason).collect::<Vec<_>>().join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use GroupLevel::{House, Household, Plug};
    use QueryKind::{Compute, Histograms, Range};

    fn at(now: u64, query: QueryKind, level: GroupLevel) -> AppRequest {
        AppRequest { now, query, level }
    }

    fn check(token: &AppToken, root: &TokenRoot, req: &AppRequest) -> Result<Grant, AppTokenError> {
        authorize(&token.0, root, req, |_| false)
    }

    /// What a plain range query at t = 10 gets.
    fn granted(token: &AppToken, root: &TokenRoot) -> Grant {
        check(token, root, &at(10, Range, House)).unwrap()
    }

    fn only(houses: &[u32]) -> HouseScope {
        HouseScope::Only(houses.iter().copied().collect())
    }

    /// Alice owns houses 3 and 4 until t = 1000.
    fn owner() -> (TokenAuthority, TokenRoot, AppToken) {
        let authority = TokenAuthority::generate();
        let token = authority.issue_owner("alice", &[3, 4], 1_000).unwrap();
        let root = authority.root();
        (authority, root, token)
    }

    fn narrow(token: &AppToken, root: &TokenRoot, f: impl FnOnce(&mut Attenuation)) -> AppToken {
        let mut attenuation = Attenuation::default();
        f(&mut attenuation);
        token.attenuate(root, &attenuation).unwrap()
    }

    #[test]
    fn no_token_names_a_role_of_the_deployment() {
        let (authority, _, _) = owner();
        let e = authority.issue_owner("@cloud-0", &[1], 1_000).unwrap_err();
        assert_eq!(e.code(), "token_issue", "{e}");
        assert!(e.to_string().contains("deployment's own roles"), "{e}");
        assert!(authority.issue_collector("@collector", 1_000).is_err());
    }

    #[test]
    fn owner_token_allows_its_houses_at_every_level_and_query() {
        let (_, root, token) = owner();
        for level in [House, Household, Plug] {
            for query in [Compute, Range, Histograms] {
                let grant = check(&token, &root, &at(10, query, level)).unwrap();
                assert_eq!(grant.user, "alice");
                assert_eq!(grant.houses, only(&[3, 4]));
            }
        }
        assert!(only(&[3, 4]).allows(4) && !only(&[3, 4]).allows(5));
    }

    #[test]
    fn collector_token_grants_every_house() {
        let authority = TokenAuthority::generate();
        let token = authority.issue_collector("analytics", 1_000).unwrap();
        let grant = granted(&token, &authority.root());
        assert_eq!(grant.user, "analytics");
        assert_eq!(grant.houses, HouseScope::All);
    }

    #[test]
    fn house_attenuation_only_narrows() {
        let (_, root, token) = owner();
        let three = narrow(&token, &root, |a| a.houses = Some(vec![3]));
        assert_eq!(granted(&three, &root).houses, only(&[3]));
        let foreign = narrow(&token, &root, |a| a.houses = Some(vec![9]));
        assert_eq!(granted(&foreign, &root).houses, only(&[]));
        // A later block listing more houses cannot bring back what an earlier one dropped.
        let wider = narrow(&three, &root, |a| a.houses = Some(vec![3, 4, 9]));
        assert_eq!(granted(&wider, &root).houses, only(&[3]));
    }

    #[test]
    fn level_and_query_attenuations_refuse_in_words() {
        let (_, root, token) = owner();
        let coarse = narrow(&token, &root, |a| a.levels = Some(vec![House]));
        assert!(check(&coarse, &root, &at(10, Range, House)).is_ok());
        let err = check(&coarse, &root, &at(10, Range, Plug)).unwrap_err();
        assert_eq!(err.code(), "token_out_of_scope");
        assert!(
            err.to_string().contains("level plug is not allowed"),
            "{err}"
        );
        let compute = narrow(&token, &root, |a| a.queries = Some(vec![Compute]));
        assert!(check(&compute, &root, &at(10, Compute, Plug)).is_ok());
        let err = check(&compute, &root, &at(10, Range, Plug)).unwrap_err();
        assert!(matches!(&err, AppTokenError::OutOfScope(m) if m.contains("query kind range")));
    }

    #[test]
    fn expiry_is_told_apart_and_the_earliest_wins() {
        let (authority, root, long) = owner();
        let token = authority.issue_owner("alice", &[3], 100).unwrap();
        assert!(check(&token, &root, &at(100, Range, House)).is_ok());
        let err = check(&token, &root, &at(101, Range, House)).unwrap_err();
        assert_eq!(format!("{err:?}"), "Expired { expired: 100, now: 101 }");
        assert_eq!(err.code(), "token_expired");
        let short = narrow(&long, &root, |a| a.expires = Some(100));
        assert!(check(&long, &root, &at(500, Range, House)).is_ok());
        let err = check(&short, &root, &at(500, Range, House)).unwrap_err();
        assert_eq!(format!("{err:?}"), "Expired { expired: 100, now: 500 }");
    }

    #[test]
    fn revocation_refuses_the_block_and_everything_after_it() {
        let (_, root, token) = owner();
        let child = narrow(&token, &root, |a| a.app = Some("plotter".into()));
        let ids = child.revocation_ids(&root).unwrap();
        assert_eq!(token.revocation_ids(&root).unwrap(), ids[..1]);
        assert_eq!(granted(&child, &root).revocation_ids, ids);
        assert_eq!(ids.len(), 2);
        let req = at(10, Range, House);
        for t in [&token, &child] {
            let err = authorize(&t.0, &root, &req, |id| id == ids[0]).unwrap_err();
            assert!(matches!(&err, AppTokenError::Revoked(id) if *id == ids[0]));
        }
        assert!(authorize(&child.0, &root, &req, |id| id == ids[1]).is_err());
        assert!(authorize(&token.0, &root, &req, |id| id == ids[1]).is_ok());
    }

    #[test]
    fn foreign_garbage_oversized_and_overlong_tokens_are_malformed() {
        let (_, root, mut token) = owner();
        let req = at(10, Range, House);
        let err = check(&token, &TokenAuthority::generate().root(), &req).unwrap_err();
        assert!(err.code() == "token_malformed" && err.to_string().contains("root key"));
        for garbage in ["", "not a token", "!!!!"] {
            let err = authorize(garbage, &root, &req, |_| false).unwrap_err();
            assert!(matches!(err, AppTokenError::Malformed(_)), "{err:?}");
        }
        // A valid token followed by base64 past the bound: refused on length alone.
        let huge = format!("{}{}", token.0, "A".repeat(MAX_TOKEN_BYTES));
        let err = authorize(&huge, &root, &req, |_| false).unwrap_err();
        assert!(err.to_string().contains("bytes, more than"), "{err}");
        for _ in 1..MAX_BLOCKS {
            token = narrow(&token, &root, |_| {});
        }
        assert_eq!(granted(&token, &root).revocation_ids.len(), MAX_BLOCKS);
        let err = token.attenuate(&root, &Attenuation::default()).unwrap_err();
        assert_eq!(err.code(), "token_issue");
    }

    #[test]
    fn delegation_chain_names_the_last_app() {
        let (_, root, token) = owner();
        let plotter = narrow(&token, &root, |a| a.app = Some("plotter".into()));
        assert_eq!(granted(&plotter, &root).app.as_deref(), Some("plotter"));
        let readonly = narrow(&plotter, &root, |a| {
            a.app = Some("plotter/readonly".into());
            a.levels = Some(vec![House, Household]);
        });
        let grant = granted(&readonly, &root);
        assert_eq!(grant.app.as_deref(), Some("plotter/readonly"));
        // A name that looks like Datalog stays a name.
        let sly = r#"x"); house(9); app("y"#;
        let grant = granted(&narrow(&token, &root, |a| a.app = Some(sly.into())), &root);
        assert_eq!(grant.app.as_deref(), Some(sly));
        assert_eq!(grant.houses, only(&[3, 4]));
    }

    #[test]
    fn token_text_round_trips() {
        let (authority, root, token) = owner();
        let token = narrow(&token, &root, |a| a.houses = Some(vec![4]));
        let parsed = Biscuit::from_base64(&token.0, root.key).unwrap();
        let text = parsed.to_base64().unwrap();
        assert_eq!(text, token.0);
        let root_again = TokenRoot::from_hex(&root.to_hex()).unwrap();
        let back = granted(&AppToken(text), &root_again);
        assert_eq!(back, granted(&token, &root));
        let again = TokenAuthority::from_private_hex(&authority.private_hex()).unwrap();
        assert_eq!(again.root().to_hex(), root.to_hex());
    }

    #[test]
    fn plugs_and_metrics_only_narrow() {
        let authority = TokenAuthority::generate();
        let root = authority.root();
        let token = authority.issue_owner("alice", &[3], 4_000_000_000).unwrap();
        let narrow = |t: &AppToken, plugs: Vec<u32>, metrics: Vec<crate::reading::Metric>| {
            t.attenuate(
                &root,
                &Attenuation {
                    plugs: Some(plugs),
                    metrics: Some(metrics),
                    ..Attenuation::default()
                },
            )
            .unwrap()
        };
        use crate::reading::Metric::{Load, Work};
        let once = narrow(&token, vec![1, 2], vec![Load, Work]);
        let twice = narrow(&once, vec![2, 9], vec![Load]);
        let request = AppRequest {
            now: 1,
            query: QueryKind::Compute,
            level: GroupLevel::Plug,
        };
        let grant = authorize(&twice.0, &root, &request, |_| false).unwrap();
        assert_eq!(grant.plugs, Some([2].into_iter().collect()));
        assert_eq!(grant.metrics, Some([Load].into_iter().collect()));
        let plain = authorize(&token.0, &root, &request, |_| false).unwrap();
        assert_eq!((plain.plugs, plain.metrics), (None, None));
    }
}
