//! runc-compatible logging: `--log FILE` and `--log-format text|json`, where a JSON line is
//! `{"level":"error","msg":"…","time":"…"}` as conmon and containerd's shim read it.

use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Output format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time="…" level=info msg="…"`
    Text,
    /// One JSON object per line.
    Json,
}

struct Line {
    format: LogFormat,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Msg(String);

impl Visit for Msg {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for Line {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Msg::default();
        event.record(&mut m);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": m.0, "time": time}).to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level={level} msg={:?}", m.0),
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Installs the global logger. Returns whether logs go to a file (errors are then also
/// printed on stderr for people).
pub fn init(
    path: Option<&std::path::Path>,
    format: LogFormat,
    debug: bool,
) -> anyhow::Result<bool> {
    let (out, to_file): (Box<dyn Write + Send>, bool) = match path {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("open log file {}: {e}", p.display()))?;
            (Box::new(f), true)
        }
        None => (Box::new(std::io::stderr()), false),
    };
    let level = if debug {
        tracing::level_filters::LevelFilter::DEBUG
    } else {
        tracing::level_filters::LevelFilter::WARN
    };
    tracing_subscriber::registry()
        .with(
            Line {
                format,
                out: Mutex::new(out),
            }
            .with_filter(level),
        )
        .init();
    Ok(to_file)
}

/// Logging of a hidden daemon entry point (`porta api`): text lines on stderr (the
/// supervisor's log), the level from `PORTA_LOG` (default info).
pub fn init_daemon() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}
