//! `porta objects [ID] [--format table|json]`: the object namespace. On the host it is
//! built from the state root (`--root`); inside a container (client mode: `$PORTA_API`
//! set, or `/run/porta/api.sock` a socket while `--root` is the default) it is asked of
//! the container's API socket, which answers with the container's own namespace.

use std::path::Path;

use anyhow::{bail, Context, Result};
use porta_runtime::api::client::{self, Client};
use porta_supervisor::protocol::api::Request;
use porta_supervisor::protocol::objects::Tree;

/// The default state root: with it, a container's API socket takes precedence.
const DEFAULT_ROOT: &str = "/run/porta";

/// The API socket to use instead of the state root, if any.
pub fn client_socket(root: &Path) -> Option<std::path::PathBuf> {
    if std::env::var_os(porta_supervisor::protocol::api::ENV_PATH).is_some_and(|v| !v.is_empty()) {
        return client::socket_path();
    }
    if root == Path::new(DEFAULT_ROOT) {
        return client::socket_path();
    }
    None
}

/// Runs `porta objects`.
pub fn run(root: &Path, id: Option<&str>, format: &str) -> Result<i32> {
    if !matches!(format, "table" | "json") {
        bail!("--format: {format:?} is not table or json");
    }
    let tree = match client_socket(root) {
        Some(sock) => from_api(&sock, id)?,
        None => {
            if !root.is_dir() {
                bail!("state root {} does not exist", root.display());
            }
            porta_runtime::objects::host_tree(root, id)?.tree
        }
    };
    if format == "json" {
        println!("{}", String::from_utf8_lossy(&tree.encode()));
    } else {
        let mut out = String::new();
        for o in &tree.objects {
            o.render(0, &mut out);
        }
        print!("{out}");
    }
    Ok(0)
}

/// The tree through the API socket at `sock`: the whole namespace, or the object `id`
/// names (an object path, the namespace's own id, or a child container's id).
fn from_api(sock: &Path, id: Option<&str>) -> Result<Tree> {
    let c = Client::connect(sock)?;
    let ask = |path: Option<String>| -> Result<Tree> {
        let v = c.value(&Request::List { path })?;
        serde_json::from_value(v).context("the API server's tree")
    };
    let whole = ask(None)?;
    let Some(id) = id else {
        return Ok(whole);
    };
    if id.starts_with('/') {
        return ask(Some(id.to_string()));
    }
    let own = whole
        .objects
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_default();
    if id == own {
        return Ok(whole);
    }
    ask(Some(format!("/{own}/children/{id}")))
        .with_context(|| format!("container {id} is not this container nor one of its children"))
}
