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
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::format::convert::proto_fact_to_token_fact;
use biscuit_auth::{
    Authorizer, AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, PublicKey,
    UnverifiedBiscuit,
};
use serde::{Deserialize, Serialize};

use crate::reading::GroupLevel;

/// Tokens come from hostile callers: both bounds are enforced before any signature is checked
/// or any Datalog runs, so a caller cannot make a cloud verify hundreds of signatures.
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
        TokenAuthority {
            keys: KeyPair::new_with_algorithm(Algorithm::Ed25519),
        }
    }

    pub fn from_private_hex(hex: &str) -> Result<TokenAuthority, AppTokenError> {
        let key = PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
            .map_err(|e| AppTokenError::Issue(format!("bad root private key: {e}")))?;
        Ok(TokenAuthority {
            keys: KeyPair::from(&key),
        })
    }

    /// Secret: whoever holds it can mint tokens for every house.
    pub fn private_hex(&self) -> String {
        self.keys.private().to_bytes_hex()
    }

    pub fn root(&self) -> TokenRoot {
        TokenRoot {
            key: self.keys.public(),
        }
    }

    /// A house owner's token: user `user` may read the houses `houses` (every level, every query kind) until `expires` (Unix seconds).
    pub fn issue_owner(
        &self,
        user: &str,
        houses: &[u32],
        expires: u64,
    ) -> Result<AppToken, AppTokenError> {
        let facts = houses.iter().map(|h| dl::fact("house", &[house_term(*h)]));
        self.issue(user, facts, expires)
    }

    /// The deployment's analytics collector: every house, every query kind, until `expires`.
    pub fn issue_collector(&self, name: &str, expires: u64) -> Result<AppToken, AppTokenError> {
        let all = dl::fact("all_houses", &[dl::boolean(true)]);
        self.issue(name, std::iter::once(all), expires)
    }

    fn issue(
        &self,
        user: &str,
        houses: impl Iterator<Item = Fact>,
        expires: u64,
    ) -> Result<AppToken, AppTokenError> {
        // Names go in as terms of built facts, never through Datalog source, so no name can
        // inject facts or checks.
        let mut builder = Biscuit::builder().fact(dl::fact("user", &[dl::string(user)]))?;
        for fact in houses {
            builder = builder.fact(fact)?;
        }
        let token = builder.merge(expiry(expires)?).build(&self.keys)?;
        Ok(AppToken(token.to_base64()?))
    }
}

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
            return Err(AppTokenError::Issue(format!(
                "the token already has {MAX_BLOCKS} blocks, the most a cloud accepts"
            )));
        }
        let mut block = BlockBuilder::new();
        if let Some(app) = &narrow.app {
            block = block.fact(dl::fact("app", &[dl::string(app)]))?;
        }
        if let Some(houses) = &narrow.houses {
            let set = houses.iter().map(|h| house_term(*h)).collect();
            block = block.fact(dl::fact("houses", &[Term::Set(set)]))?;
        }
        if let Some(queries) = &narrow.queries {
            let set = queries.iter().map(|q| dl::string(q.name())).collect();
            block = with_check(block, "check if query($q), {allowed}.contains($q)", set)?;
        }
        if let Some(levels) = &narrow.levels {
            let set = levels.iter().map(|l| dl::string(l.name())).collect();
            block = with_check(block, "check if level($l), {allowed}.contains($l)", set)?;
        }
        if let Some(expires) = narrow.expires {
            block = block.merge(expiry(expires)?);
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

    fn narrow(self, to: BTreeSet<u32>) -> HouseScope {
        match self {
            HouseScope::All => HouseScope::Only(to),
            HouseScope::Only(houses) => HouseScope::Only(&houses & &to),
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
    let revocation_ids = revocation_ids(&token);
    if let Some(id) = revocation_ids.iter().find(|id| is_revoked(id)) {
        return Err(AppTokenError::Revoked(id.clone()));
    }
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(AuthorizerLimits {
            // The default 1 ms is wall-clock time and trips on a loaded machine; tokens are
            // bounded in size, so the fact and iteration limits still bound the work.
            max_time: Duration::from_millis(50),
            ..AuthorizerLimits::default()
        })
        .fact(dl::fact("time", &[Term::Date(request.now)]))?
        .fact(dl::fact("query", &[dl::string(request.query.name())]))?
        .fact(dl::fact("level", &[dl::string(request.level.name())]))?
        // The token's own checks decide; nothing else has to hold.
        .policy("allow if true")?
        .build(&token)?;
    let claims = Claims::read(&block_facts(&authorizer)?)?;
    if let Some(expired) = claims.expires.filter(|e| request.now > *e) {
        return Err(AppTokenError::Expired {
            expired,
            now: request.now,
        });
    }
    authorizer
        .authorize()
        .map_err(|e| refusal(e, request))?;
    Ok(Grant {
        user: claims.user,
        app: claims.app,
        houses: claims.houses,
        revocation_ids,
    })
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

/// Builder failures surface only while issuing or attenuating; the verifying path maps its
/// errors itself.
impl From<BiscuitError> for AppTokenError {
    fn from(e: BiscuitError) -> Self {
        AppTokenError::Issue(e.to_string())
    }
}

fn house_term(house: u32) -> Term {
    dl::int(i64::from(house))
}

/// The `expires` fact lets a cloud tell an expired token from one used out of scope; the check
/// is what enforces it.
fn expiry(expires: u64) -> Result<BlockBuilder, BiscuitError> {
    BlockBuilder::new()
        .fact(dl::fact("expires", &[Term::Date(expires)]))?
        .code_with_params(
            "check if time($t), $t <= {expires}",
            HashMap::from([("expires".to_string(), Term::Date(expires))]),
            HashMap::new(),
        )
}

fn with_check(
    block: BlockBuilder,
    source: &str,
    allowed: BTreeSet<Term>,
) -> Result<BlockBuilder, BiscuitError> {
    let params = HashMap::from([("allowed".to_string(), Term::Set(allowed))]);
    block.code_with_params(source, params, HashMap::new())
}

fn verify(token: &str, root: &TokenRoot) -> Result<Biscuit, AppTokenError> {
    use AppTokenError::Malformed;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Malformed(format!(
            "{} bytes, more than the {MAX_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    let unverified = UnverifiedBiscuit::from_base64(token)
        .map_err(|e| Malformed(format!("not a biscuit token: {e}")))?;
    if unverified.block_count() > MAX_BLOCKS {
        return Err(Malformed(format!(
            "{} blocks, more than the {MAX_BLOCKS} accepted",
            unverified.block_count()
        )));
    }
    // Every block here is appended by a holder, never signed by a third party; refusing them
    // keeps the per-block reading in `Claims` the whole story.
    if unverified.external_public_keys().iter().any(Option::is_some) {
        return Err(Malformed("third-party blocks are not accepted".into()));
    }
    unverified
        .verify(&root.key)
        .map_err(|e| Malformed(format!("signature chain does not verify under the root key: {e}")))
}

fn revocation_ids(token: &Biscuit) -> Vec<String> {
    token.revocation_identifiers().iter().map(hex::encode).collect()
}

/// The facts each block declares, in block order (the authority first). Biscuit's queries
/// either trust only the authority block or merge every block without saying which block a
/// fact came from; narrowing houses needs to know, since a later block could otherwise add
/// facts that widen an earlier block's set. The authorizer's snapshot keeps blocks apart.
fn block_facts(authorizer: &Authorizer) -> Result<Vec<Vec<Fact>>, AppTokenError> {
    let malformed = |e: biscuit_auth::error::Format| AppTokenError::Malformed(e.to_string());
    let world = authorizer.snapshot().map_err(malformed)?.world;
    let symbols = SymbolTable::from(world.symbols).map_err(malformed)?;
    world
        .blocks
        .iter()
        .map(|block| {
            block
                .facts
                .iter()
                .map(|f| Fact::convert_from(&proto_fact_to_token_fact(f)?, &symbols))
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed)
        })
        .collect()
}

/// What the blocks say beyond their checks.
struct Claims {
    user: String,
    app: Option<String>,
    houses: HouseScope,
    expires: Option<u64>,
}

impl Claims {
    fn read(blocks: &[Vec<Fact>]) -> Result<Claims, AppTokenError> {
        let Some((authority, attenuations)) = blocks.split_first() else {
            return Err(AppTokenError::Malformed("no authority block".into()));
        };
        let named = |block: &[Fact], name: &str| -> Vec<Vec<Term>> {
            let facts = block.iter().filter(|f| f.predicate.name == name);
            facts.map(|f| f.predicate.terms.clone()).collect()
        };
        let mut users = named(authority, "user").into_iter().filter_map(single_str);
        let (Some(user), None) = (users.next(), users.next()) else {
            return Err(AppTokenError::Malformed("the authority names no single user".into()));
        };
        let mut houses = if named(authority, "all_houses").contains(&vec![Term::Bool(true)]) {
            HouseScope::All
        } else {
            HouseScope::Only(named(authority, "house").iter().filter_map(|t| house(t)).collect())
        };
        let mut app = None;
        for (index, block) in attenuations.iter().enumerate() {
            // A block's houses only intersect: whatever it lists, it cannot add a house. A
            // `houses` fact that is not a set of house numbers narrows to nothing.
            for terms in named(block, "houses") {
                let set = match terms.as_slice() {
                    [Term::Set(set)] => set.iter().filter_map(|t| house(std::slice::from_ref(t))).collect(),
                    _ => BTreeSet::new(),
                };
                houses = houses.narrow(set);
            }
            let mut names = named(block, "app").into_iter().filter_map(single_str);
            match (names.next(), names.next()) {
                (Some(_), Some(_)) => {
                    let block = index + 1;
                    return Err(AppTokenError::Malformed(format!("block {block} names two apps")));
                }
                (Some(name), None) => app = Some(name),
                _ => {}
            }
        }
        // The earliest expiry of any block wins; a forged later `expires` can only shorten.
        let expires = blocks
            .iter()
            .flat_map(|block| named(block, "expires"))
            .filter_map(|terms| match terms.as_slice() {
                [Term::Date(at)] => Some(*at),
                _ => None,
            })
            .min();
        Ok(Claims {
            user,
            app,
            houses,
            expires,
        })
    }
}

fn single_str(terms: Vec<Term>) -> Option<String> {
    match terms.as_slice() {
        [Term::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

fn house(terms: &[Term]) -> Option<u32> {
    match terms {
        [Term::Integer(n)] => u32::try_from(*n).ok(),
        _ => None,
    }
}

fn refusal(e: BiscuitError, request: &AppRequest) -> AppTokenError {
    let checks = match e {
        BiscuitError::FailedLogic(Logic::Unauthorized { checks, .. })
        | BiscuitError::FailedLogic(Logic::NoMatchingPolicy { checks }) => checks,
        BiscuitError::RunLimit(limit) => {
            return AppTokenError::Malformed(format!("too costly to evaluate: {limit}"))
        }
        other => return AppTokenError::Malformed(other.to_string()),
    };
    let reasons: Vec<String> = checks
        .iter()
        .map(|check| match check {
            FailedCheck::Block(c) => {
                // Only to word the refusal: the predicate a check reads says what it restricts.
                let what = if c.rule.contains("level(") {
                    format!("level {} is not allowed", request.level.name())
                } else if c.rule.contains("query(") {
                    format!("query kind {} is not allowed", request.query.name())
                } else if c.rule.contains("time(") {
                    format!("time {} is past the block's expiry", request.now)
                } else {
                    format!("check {} failed", c.rule)
                };
                format!("{what} (block {})", c.block_id)
            }
            FailedCheck::Authorizer(c) => format!("authorizer check {} failed", c.rule),
        })
        .collect();
    AppTokenError::OutOfScope(reasons.join("; "))
}
