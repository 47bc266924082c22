//! `mcloud console`: the deployment's console, for whoever holds its deployment file. Each
//! node serves its own `/console`; this one looks across the deployment. Every two seconds
//! the page reads `/api/overview`: every cloud's and catalog voter's health from its public
//! status page (reachable or not, how long it took to answer, its key figures), and the
//! latest revealed windows per house, asked through the collector with the deployment's app
//! token, so it shows no more than `mcloud query` would show that app. Every ten seconds it
//! reads `/api/analytics`: Q1's forecasts against the load that came and Q2's outliers, per
//! house, over the last hour of event time, computed as `mcloud analytics` computes them.
//!
//! Those aggregates must not reach whoever else can open a port on the machine: the server
//! listens on loopback by default and answers only requests that carry the random key it
//! prints at start.

use crate::config::Deployment;
use anyhow::{Context, Result};
use axum::extract::{Query as UrlQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use futures::future::join_all;
use mcloud_analytics::WINDOW_SECS;
use mcloud_collector::{CloudSource, Collector, Query, RevealedResult};
use mcloud_core::reading::GroupLevel;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("../assets/deployment-console.html");

/// How long one node's status may take before it counts as unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args, Clone, Debug)]
pub struct ConsoleArgs {
    /// The deployment file naming the catalog and the clouds (and the app token).
    #[arg(long)]
    pub deployment: PathBuf,
    /// Where the console listens (plain HTTP: keep it on loopback, or behind a proxy that
    /// adds TLS).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// How many of the latest closed windows are revealed.
    #[arg(long, default_value_t = 10)]
    pub windows: u64,
    /// Minutes of event time, up to the last closed window, over which forecasts and outliers
    /// are shown (5 to 1440; the clouds must use 30 s windows).
    #[arg(long, default_value_t = 60)]
    pub analytics_minutes: u64,
}

struct Console {
    page: String,
    /// The key's tag under `mac`: a request's key is checked with `hmac::verify`, which
    /// compares in constant time, so answer times do not give the key away.
    key_tag: ring::hmac::Tag,
    mac: ring::hmac::Key,
    windows: u64,
    /// (role, party or voter, url, client) for every node, clouds first.
    nodes: Vec<(&'static str, u64, String, reqwest::Client)>,
    /// Absent when the deployment file holds no app token: then only health is shown.
    collector: Option<Arc<Collector>>,
    analytics_secs: u64,
    /// The last analytics answer and the boundary it ends at: it changes only when the
    /// clouds close another window, and the lock keeps two pages from computing it twice.
    analytics: tokio::sync::Mutex<Option<(u64, Value)>>,
}

#[derive(Deserialize)]
struct KeyParam {
    key: Option<String>,
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let deployment = Deployment::load(&args.deployment)?;
    let mut nodes = Vec::new();
    for (party, e) in deployment.cloud_endpoints()?.into_iter().enumerate() {
        nodes.push(("cloud", party as u64, e.url, e.http));
    }
    for (voter, e) in deployment.catalog_endpoints()?.into_iter().enumerate() {
        nodes.push(("catalog voter", voter as u64 + 1, e.url, e.http));
    }
    let collector = match deployment.app_cloud_endpoints() {
        Ok(endpoints) => Some(Arc::new(Collector::new(endpoints))),
        Err(e) => {
            tracing::warn!("no revealed windows on the console: {e:#}");
            None
        }
    };
    let key = hex::encode(rand::random::<[u8; 16]>());
    let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rand::random::<[u8; 32]>());
    let console = Arc::new(Console {
        page: mcloud_core::console::styled(PAGE),
        key_tag: ring::hmac::sign(&mac, key.as_bytes()),
        mac,
        windows: args.windows.clamp(1, 1000),
        nodes,
        collector,
        analytics_secs: args.analytics_minutes.clamp(5, 1440) * 60,
        analytics: tokio::sync::Mutex::new(None),
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/analytics", get(analytics))
        .with_state(console);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("console: http://{addr}/?key={key}");
    axum::serve(listener, app).await?;
    Ok(())
}

fn allowed(console: &Console, given: &Option<String>) -> bool {
    given.as_deref().is_some_and(|k| {
        ring::hmac::verify(&console.mac, k.as_bytes(), console.key_tag.as_ref()).is_ok()
    })
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"code": "console_key", "error": "this console needs the key it printed at start: /?key=…"})),
    )
        .into_response()
}

async fn page(State(console): State<Arc<Console>>, UrlQuery(p): UrlQuery<KeyParam>) -> Response {
    if !allowed(&console, &p.key) {
        return refused();
    }
    Html(console.page.clone()).into_response()
}

async fn overview(
    State(console): State<Arc<Console>>,
    UrlQuery(p): UrlQuery<KeyParam>,
) -> Response {
    if !allowed(&console, &p.key) {
        return refused();
    }
    let nodes = join_all(
        console
            .nodes
            .iter()
            .map(|(role, id, url, http)| node_health(role, *id, url, http)),
    )
    .await;
    let revealed = match &console.collector {
        Some(collector) => reveal_latest(collector, &nodes, console.windows).await,
        None => json!({"error": "the deployment file holds no app token"}),
    };
    Json(json!({ "nodes": nodes, "revealed": revealed })).into_response()
}

async fn analytics(
    State(console): State<Arc<Console>>,
    UrlQuery(p): UrlQuery<KeyParam>,
) -> Response {
    if !allowed(&console, &p.key) {
        return refused();
    }
    let Some(collector) = console.collector.clone() else {
        return Json(json!({"error": "the deployment file holds no app token"})).into_response();
    };
    let clouds = join_all(
        console
            .nodes
            .iter()
            .filter(|(role, ..)| *role == "cloud")
            .map(|(role, id, url, http)| node_health(role, *id, url, http)),
    )
    .await;
    let answer = match analytics_range(&clouds, console.analytics_secs) {
        Err(why) => json!({ "error": why }),
        Ok((kept_from, from, to)) => {
            let mut cached = console.analytics.lock().await;
            match cached.as_ref() {
                Some((ended, answer)) if *ended == to => answer.clone(),
                _ => {
                    let answer = recent(collector, kept_from, from, to).await;
                    *cached = Some((to, answer.clone()));
                    answer
                }
            }
        }
    };
    Json(answer).into_response()
}

/// The range the analytics run over, `(kept_from, from, to)`: the last `secs` before the
/// window every cloud has closed, and the retention horizon before which no cloud answers;
/// or why there is none.
fn analytics_range(clouds: &[Value], secs: u64) -> Result<(u64, u64, u64), String> {
    if clouds.iter().any(|c| c["ok"] != true) {
        return Err("a cloud is unreachable, so no window can be revealed".into());
    }
    for cloud in clouds {
        let window = cloud["figures"]["window_secs"].as_u64().unwrap_or(0);
        if window != WINDOW_SECS {
            return Err(format!(
                "forecasts and outliers need {WINDOW_SECS} s windows; cloud {} uses {window} s",
                cloud["id"]
            ));
        }
    }
    let closed = clouds
        .iter()
        .filter_map(|c| c["figures"]["closed_before"].as_u64())
        .min()
        .unwrap_or(0);
    let to = closed - closed % WINDOW_SECS;
    if to == 0 {
        return Err("no window closed yet".into());
    }
    // A cloud that archives answers from where its archive begins; one that does not, from
    // its retention horizon.
    let kept_from = clouds
        .iter()
        .filter_map(|c| {
            let figures = &c["figures"];
            figures["archived_from"]
                .as_u64()
                .or_else(|| figures["retained_from"].as_u64())
        })
        .max()
        .unwrap_or(0);
    let kept_from = kept_from.div_ceil(WINDOW_SECS) * WINDOW_SECS;
    let from = to.saturating_sub(secs).max(kept_from);
    if from >= to {
        return Err("every window before the last closed one is past the clouds' retention".into());
    }
    Ok((kept_from, from, to))
}

/// Runs the queries through the collector on a blocking thread, as `mcloud analytics` does.
async fn recent(collector: Arc<Collector>, kept_from: u64, from: u64, to: u64) -> Value {
    let runtime = tokio::runtime::Handle::current();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        let mut source = CloudSource::new(collector, runtime);
        mcloud_analytics::recent::recent(&mut source, kept_from, from, to)
    })
    .await;
    match answer {
        Ok(Ok(recent)) => {
            let mut answer = json!(recent);
            answer["seconds"] = json!(started.elapsed().as_secs_f64());
            answer["kept_from"] = json!(kept_from);
            answer
        }
        Ok(Err(e)) => json!({ "error": e.to_string() }),
        Err(e) => json!({ "error": format!("analytics task: {e}") }),
    }
}

/// One node's health: whether its status page answered within [`STATUS_TIMEOUT`], how long
/// it took, and the figures an operator looks at first.
async fn node_health(role: &str, id: u64, url: &str, http: &reqwest::Client) -> Value {
    let started = Instant::now();
    let status_url = format!("{url}{}", mcloud_core::paths::STATUS_PATH);
    let answer = tokio::time::timeout(STATUS_TIMEOUT, async {
        let response = http.get(&status_url).send().await?.error_for_status()?;
        response.json::<Value>().await
    })
    .await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ok, figures, error) = match answer {
        Ok(Ok(status)) => (true, figures(role, &status), Value::Null),
        Ok(Err(e)) => (false, Value::Null, e.to_string().into()),
        Err(_) => (
            false,
            Value::Null,
            format!("no answer within {STATUS_TIMEOUT:?}").into(),
        ),
    };
    json!({"role": role, "id": id, "url": url, "ok": ok, "ms": ms, "figures": figures, "error": error})
}

fn figures(role: &str, status: &Value) -> Value {
    if role == "cloud" {
        return json!({
            "watermark": status["watermark"],
            "closed_before": status["closed_before"],
            "window_secs": status["window_secs"],
            "retained_from": status["retention"]["retained_from"],
            "archived_from": status["retention"]["archive"]["archived_from"],
            "batches": status["batches"],
            "undecided_batches": status["undecided_batches"],
            // Worker id → buckets it owns.
            "workers": status["elastic"]["workers"].as_object().map_or(0, |w| w.len()),
        });
    }
    let partitions: Vec<Value> = status["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    json!({
                        "partition": p["partition"],
                        "state": p["state"],
                        "leader": p["leader"],
                        "term": p["term"],
                        "last_applied": p["last_applied"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "partitions": partitions })
}

/// The last `count` windows that every reachable cloud has closed, per house.
async fn reveal_latest(collector: &Collector, nodes: &[Value], count: u64) -> Value {
    let clouds: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["role"] == "cloud" && n["ok"] == true)
        .collect();
    let closed = clouds
        .iter()
        .filter_map(|n| n["figures"]["closed_before"].as_u64())
        .min();
    let window = clouds
        .iter()
        .filter_map(|n| n["figures"]["window_secs"].as_u64())
        .max()
        .unwrap_or(60)
        .max(1);
    let Some(closed) = closed.filter(|c| *c > 0) else {
        return json!({"windows": [], "note": "no window closed yet"});
    };
    let to = closed - closed % window;
    let query = Query {
        from: to.saturating_sub(count.saturating_mul(window)),
        to,
        level: GroupLevel::House,
        min_count: 1,
    };
    match collector.collect(&query).await {
        Ok(revealed) => revealed_json(&revealed),
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn revealed_json(revealed: &RevealedResult) -> Value {
    let windows: Vec<Value> = revealed
        .windows
        .iter()
        .rev()
        .map(|w| {
            json!({
                "window_start": w.window.start,
                "batches": w.batches,
                "withheld": w.withheld,
                "groups": w.groups.iter().map(|g| json!({
                    "metric": g.metric,
                    "house": g.group.house,
                    "count": g.totals.count,
                    "mean": g.totals.mean(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "windows": windows,
        "implausible": revealed.implausible.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "not_ready": revealed.not_ready.len(),
    })
}
