//! `spacefilter top`: a live terminal view of what is being dropped: the
//! drop rate of each reason with its last minute as a sparkline, and the
//! heaviest dropped sources and prefixes, refreshed with every `top` line
//! the daemon streams.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    time::Duration,
};

use crossterm::{
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{
    Frame, Terminal,
    backend::{Backend, CrosstermBackend},
    layout::{Constraint, Direction, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use crate::api::{
    Response, TalkerView, TopView,
    client::{Client, ClientError},
};

/// Seconds of rate history each sparkline shows.
const HISTORY: usize = 60;

/// The drop rate of each reason over the last [`HISTORY`] snapshots.
#[derive(Default)]
pub(super) struct History {
    rates: BTreeMap<String, VecDeque<f64>>,
}

impl History {
    pub(super) fn push(&mut self, view: &TopView) {
        for (reason, rate) in &view.drops_per_sec {
            let series = self.rates.entry(reason.clone()).or_default();
            if series.len() == HISTORY {
                series.pop_front();
            }
            series.push_back(*rate);
        }
    }

    fn series(&self, reason: &str) -> Option<&VecDeque<f64>> {
        self.rates.get(reason)
    }
}

/// A rate in a few characters: 950, 12.5k, 3.61M.
#[must_use]
pub(super) fn human_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e4 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// A series as a line of block characters, scaled to its own peak.
fn sparkline(series: &VecDeque<f64>, width: usize) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = series.iter().copied().fold(0.0, f64::max);
    let skip = series.len().saturating_sub(width);
    series
        .iter()
        .skip(skip)
        .map(|&v| {
            if peak <= 0.0 || v <= 0.0 {
                BARS[0]
            } else {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a ratio in 0..=1 scaled to 1..=8"
                )]
                let level = ((v / peak) * 8.0).ceil().clamp(1.0, 8.0) as usize;
                BARS[level]
            }
        })
        .collect()
}

fn talker_rows(talkers: &[TalkerView]) -> Vec<Row<'static>> {
    talkers
        .iter()
        .map(|t| {
            Row::new(vec![
                t.key.clone(),
                human_rate(t.packets_per_sec),
                format!("{:.1}%", t.share * 100.0),
                t.reason.clone(),
                t.matched.clone().unwrap_or_default(),
            ])
        })
        .collect()
}

fn talker_table<'a>(title: &'a str, rows: Vec<Row<'a>>) -> Table<'a> {
    Table::new(
        rows,
        [
            Constraint::Min(18),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(14),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["SOURCE", "PKT/S", "SHARE", "REASON", "MATCHED"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(title))
}

/// Draws one snapshot.
pub(super) fn render(frame: &mut Frame, view: &TopView, history: &History) {
    let sampling = if view.observe.sample_every == 0 {
        "sampling off: `spacefilter sample set --every N` to rank sources".to_owned()
    } else {
        format!(
            "sampling 1 in {}, at most {}/s; {} samples over {} s",
            view.observe.sample_every, view.observe.sample_cap, view.samples, view.window_secs
        )
    };
    let header = vec![
        Line::from(format!(
            "spacefilter top: dropping {} pkt/s, passing {} pkt/s; shield: {} SYNs/s answered \
             with cookies, {} sources/s verified    (q: quit)",
            human_rate(view.dropped_per_sec),
            human_rate(view.passed_per_sec),
            human_rate(view.cookies_per_sec),
            human_rate(view.verified_per_sec)
        )),
        Line::from(sampling),
    ];
    let reasons: Vec<(&String, &f64)> = view.drops_per_sec.iter().collect();
    let area = frame.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Length(u16::try_from(reasons.len()).unwrap_or(16) + 3),
            Constraint::Min(5),
        ])
        .split(area);
    frame.render_widget(Paragraph::new(header), rows[0]);

    let spark_width = usize::from(rows[1].width.saturating_sub(34)).min(HISTORY);
    let reason_rows: Vec<Row> = reasons
        .iter()
        .map(|(reason, rate)| {
            let spark = history
                .series(reason)
                .map(|s| sparkline(s, spark_width))
                .unwrap_or_default();
            Row::new(vec![(*reason).clone(), human_rate(**rate), spark])
        })
        .collect();
    frame.render_widget(
        Table::new(
            reason_rows,
            [
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(vec!["REASON", "PKT/S", "LAST MINUTE"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title("Drops by reason"),
        ),
        rows[1],
    );
    let halves = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(rows[2]);
    frame.render_widget(
        talker_table("Heaviest dropped sources", talker_rows(&view.sources)),
        halves[0],
    );
    frame.render_widget(
        talker_table(
            "Heaviest dropped prefixes (/24, /64)",
            talker_rows(&view.prefixes),
        ),
        halves[1],
    );
}

/// Restores the terminal however the view ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen);
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum TopError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the terminal failed")]
    Terminal(#[from] io::Error),
    #[error("{0}")]
    Daemon(String),
}

/// Runs the live view on `client` (which has sent its `top` request) until
/// q, Esc or Ctrl-C.
pub(super) fn run(client: &mut Client) -> Result<(), TopError> {
    enable_raw_mode()?;
    let _guard = TerminalGuard;
    execute!(io::stdout(), EnterAlternateScreen)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    view_loop(&mut terminal, client)
}

fn quit_pressed() -> io::Result<bool> {
    while event::poll(Duration::ZERO)? {
        if let Event::Key(key) = event::read()?
            && key.kind == KeyEventKind::Press
            && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c')
                    && key.modifiers.contains(KeyModifiers::CONTROL)))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn view_loop<B: Backend>(terminal: &mut Terminal<B>, client: &mut Client) -> Result<(), TopError> {
    let mut history = History::default();
    let mut last: Option<TopView> = None;
    loop {
        if quit_pressed()? {
            return Ok(());
        }
        match client.recv_within(Some(Duration::from_millis(100)))? {
            Some(Response::Top(view)) => {
                history.push(&view);
                last = Some(view);
            }
            Some(Response::Error { message, .. }) => return Err(TopError::Daemon(message)),
            Some(_) => return Err(TopError::Daemon("an unexpected reply".into())),
            None => {}
        }
        if let Some(view) = &last {
            terminal.draw(|frame| render(frame, view, &history))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;

    use super::*;

    #[test]
    fn renders_reasons_sources_and_prefixes() {
        let view = TopView {
            drops_per_sec: [("blocked".to_owned(), 3_610_000.0)].into(),
            dropped_per_sec: 3_610_000.0,
            passed_per_sec: 10_000.0,
            window_secs: 5,
            samples: 4_000,
            sources: vec![TalkerView {
                key: "198.18.2.7".into(),
                share: 0.75,
                packets_per_sec: 2_707_500.0,
                reason: "blocked".into(),
                matched: Some("block 198.18.2.0/24".into()),
            }],
            prefixes: vec![TalkerView {
                key: "198.18.2.0/24".into(),
                share: 1.0,
                packets_per_sec: 3_610_000.0,
                reason: "blocked".into(),
                matched: None,
            }],
            ..TopView::default()
        };
        let mut history = History::default();
        history.push(&view);
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
        terminal.draw(|f| render(f, &view, &history)).unwrap();
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(ratatui::buffer::Cell::symbol)
            .collect();
        for expected in [
            "dropping 3.61M pkt/s",
            "198.18.2.7",
            "2.71M",
            "75.0%",
            "block 198.18.2.0/24",
            "198.18.2.0/24",
            "blocked",
            "█",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from the view"
            );
        }
    }

    #[test]
    fn sparkline_scales_to_its_peak() {
        let series: VecDeque<f64> = [0.0, 50.0, 100.0].into();
        assert_eq!(sparkline(&series, 60), " ▄█");
        assert_eq!(sparkline(&series, 2), "▄█");
    }
}
