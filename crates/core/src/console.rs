//! The web console: one page, built into the binary (it works offline), that every node
//! serves at `GET /console`. It reads the node's own `/v1/status` and `/metrics` every second
//! and draws them; like those it needs no credential and shows counts and timings only.

use axum::response::Html;
use axum::routing::get;
use axum::Router;

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console";

const PAGE: &str = include_str!("../assets/console.html");

/// The style every console page shares (this node's and `mcloud console`'s).
const STYLE: &str = include_str!("../assets/console.css");

/// A console page with the shared style in place of its `/* console.css */` marker.
pub fn styled(page: &str) -> String {
    page.replace("/* console.css */", STYLE)
}

/// `router` with the console page.
pub fn with_console(router: Router) -> Router {
    let page = styled(PAGE);
    router.route(CONSOLE_PATH, get(|| async move { Html(page) }))
}
