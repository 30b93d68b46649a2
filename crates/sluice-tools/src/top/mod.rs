//! `sluice top`: the pipeline of one or several nodes, live in a terminal (like
//! `vector top`, over the whole pipeline): per node events in and out per second,
//! bytes, request p99, rejections, queue depth, processor lag, WAL fsync time, sink
//! errors and dead letters; below, the busiest streams over all nodes. It reads each
//! node's admin listener (`/metrics`, `/readyz`) every `--interval`; `q`, Esc or
//! Ctrl-C quits.

pub mod scrape;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use ratatui::Frame;

use scrape::{Figures, Reading};

/// `sluice top [--url ADMIN]... [--interval 1s]`
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// A node's admin listener (repeat for several nodes).
    #[arg(long = "url", default_value = "http://127.0.0.1:9090")]
    pub urls: Vec<String>,
    /// How often to read every node (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = sluice_core::units::HumanDuration::parse(s)
        .map_err(|e| e.to_string())?
        .0;
    if d < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

/// What `sluice top` knows of one node.
struct Node {
    url: String,
    last: Option<Reading>,
    figures: Option<Figures>,
    status: String,
}

impl Node {
    fn refresh(&mut self, timeout: Duration) {
        let metrics = format!("{}/metrics", self.url.trim_end_matches('/'));
        match scrape::get(&metrics, timeout, 64 << 20) {
            Ok((status, body)) if status.starts_with("200") => {
                let now = Reading::parse(&String::from_utf8_lossy(&body), Instant::now());
                if let Some(before) = &self.last {
                    self.figures = Some(Figures::between(before, &now));
                }
                self.last = Some(now);
                let ready = format!("{}/readyz", self.url.trim_end_matches('/'));
                self.status = match scrape::get(&ready, timeout, 4096) {
                    Ok((s, _)) if s.starts_with("200") => "ready".into(),
                    Ok((_, body)) => {
                        format!("not ready: {}", String::from_utf8_lossy(&body).trim())
                    }
                    Err(e) => e.to_string(),
                };
            }
            Ok((status, _)) => self.status = format!("/metrics answered {status}"),
            Err(e) => {
                self.status = format!("unreachable: {e}");
                self.figures = None;
                self.last = None;
            }
        }
    }
}

/// Runs the view until the user quits.
pub fn main(args: &TopArgs) -> std::io::Result<()> {
    let mut nodes: Vec<Node> = args
        .urls
        .iter()
        .map(|u| Node {
            url: u.clone(),
            last: None,
            figures: None,
            status: "connecting".into(),
        })
        .collect();
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let timeout = args.interval.min(Duration::from_secs(2));
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                for n in &mut nodes {
                    n.refresh(timeout);
                }
                next = Instant::now() + args.interval;
            }
            terminal.draw(|f| draw(f, &nodes, args.interval))?;
            if event::poll(next.saturating_duration_since(Instant::now()))? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

fn rate(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn millis(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.2}", s * 1000.0))
}

fn draw(f: &mut Frame, nodes: &[Node], interval: Duration) {
    let [head, table, streams] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(nodes.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(
        Line::from(format!(
            "sluice top: {} node(s), every {interval:?}; q quits",
            nodes.len()
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );
    let header = Row::new([
        "node",
        "status",
        "in/s",
        "out/s",
        "bytes/s",
        "p99 ms",
        "rej/s",
        "depth",
        "lag s",
        "fsync ms",
        "sink err/s",
        "dead",
        "total in",
    ])
    .style(Style::new().fg(Color::Cyan));
    let rows = nodes.iter().map(|n| {
        let mut cells = vec![n.url.clone(), n.status.clone()];
        match &n.figures {
            Some(x) => cells.extend([
                rate(x.events_in),
                rate(x.events_out),
                rate(x.bytes_in),
                millis(x.p99_seconds),
                rate(x.rejected),
                rate(x.depth_events),
                format!("{:.2}", x.lag_seconds),
                millis(x.fsync_seconds),
                rate(x.sink_errors),
                rate(x.dead_lettered),
                format!("{:.0}", x.total_in),
            ]),
            None => cells.extend(std::iter::repeat_n("-".to_string(), 11)),
        }
        Row::new(cells)
    });
    let widths = [
        Constraint::Min(22),
        Constraint::Min(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(10),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" nodes ")),
        table,
    );
    let mut by_stream: HashMap<&str, f64> = HashMap::new();
    for n in nodes.iter().filter_map(|n| n.figures.as_ref()) {
        for (s, r) in &n.streams {
            *by_stream.entry(s).or_default() += r;
        }
    }
    let mut top: Vec<(&str, f64)> = by_stream.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let rows = top
        .iter()
        .take(streams.height.saturating_sub(3) as usize)
        .map(|(s, r)| Row::new([s.to_string(), rate(*r)]));
    f.render_widget(
        Table::new(rows, [Constraint::Min(30), Constraint::Length(10)])
            .header(Row::new(["stream", "events/s"]).style(Style::new().fg(Color::Cyan)))
            .block(Block::bordered().title(" streams, all nodes ")),
        streams,
    );
}
