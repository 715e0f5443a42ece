//! SVG plots of the results (plotters, SVG backend): throughput per stack
//! (two-gateways and overhead side by side, bars at the median with a
//! min..max whisker), download time per size (local-cache, log-log), and
//! the handover timeline (bytes received over time, outage shaded), and
//! round-trip latency per stack and message size (rr).

use super::output::{groups, Group};
use super::{Record, Scenario, Stack, Status};
use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (960, 540);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e:?}")
}

fn color(stack: Stack) -> RGBColor {
    match stack {
        Stack::Tcp => RGBColor(120, 120, 120),
        Stack::Native => RGBColor(31, 119, 180),
        Stack::Mptcpize => RGBColor(255, 127, 14),
        Stack::Uml => RGBColor(44, 160, 44),
        Stack::Lkl => RGBColor(214, 39, 40),
        Stack::Mixed => RGBColor(148, 103, 189),
    }
}

/// Writes throughput.svg, download-time.svg, handover.svg and
/// round-trip.svg for the
/// scenarios that have results.
pub fn write_all(dir: &Path, records: &[Record]) -> Result<()> {
    let plots = [
        ("throughput.svg", throughput(records)?),
        ("download-time.svg", download_time(records)?),
        ("handover.svg", handover(records)?),
        ("round-trip.svg", round_trips(records)?),
    ];
    for (name, svg) in plots {
        if let Some(svg) = svg {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn bar_name(g: &Group) -> String {
    if g.path_manager.is_empty() || g.path_manager == "kernel" {
        g.stack.name().to_string()
    } else {
        format!("{} ({})", g.stack.name(), g.path_manager)
    }
}

/// Bars of median Mbit/s per stack, one panel per iperf3 scenario.
pub fn throughput(records: &[Record]) -> Result<Option<String>> {
    let all = groups(records);
    let panels: Vec<(String, Vec<&Group>)> = [Scenario::TwoGateways, Scenario::Overhead]
        .into_iter()
        .flat_map(|sc| {
            let mut settings: Vec<&str> = all
                .iter()
                .filter(|g| g.scenario == sc && !g.ok().is_empty())
                .map(|g| g.setting)
                .collect();
            settings.dedup();
            settings.into_iter().map(move |set| (sc, set))
        })
        .map(|(sc, set)| {
            let gs: Vec<&Group> = all
                .iter()
                .filter(|g| g.scenario == sc && g.setting == set && !g.ok().is_empty())
                .collect();
            (format!("{} ({set})", sc.name()), gs)
        })
        .collect();
    let panels: Vec<Panel> = panels
        .into_iter()
        .map(|(title, gs)| {
            let bars = gs
                .iter()
                .filter_map(|g| Some((bar_name(g), g.stack, g.stat(|r| r.mbit_per_s)?)))
                .collect();
            (title, bars)
        })
        .collect();
    bar_panels("throughput per stack (median, min..max)", "Mbit/s", &panels)
}

/// rr: median round trip per stack, one panel per message size; the
/// whisker reaches the p99.
pub fn round_trips(records: &[Record]) -> Result<Option<String>> {
    let all = groups(records);
    let mut panels: Vec<Panel> = Vec::new();
    for g in all.iter().filter(|g| {
        g.scenario == Scenario::Rr && g.setting.ends_with("round trip") && !g.ok().is_empty()
    }) {
        let (Some(m), Some(p99)) = (g.stat(|r| r.median_us), g.stat(|r| r.p99_us)) else {
            continue;
        };
        let bar = (bar_name(g), g.stack, (m.0, m.0, p99.0));
        match panels.iter_mut().find(|(t, _)| t == g.setting) {
            Some((_, bars)) => bars.push(bar),
            None => panels.push((g.setting.to_string(), vec![bar])),
        }
    }
    bar_panels(
        "round trip per stack (median, whisker to p99)",
        "microseconds",
        &panels,
    )
}

/// A panel's title and its bars: name, stack (colour), (height, whisker
/// low, whisker high).
type Panel = (String, Vec<(String, Stack, (f64, f64, f64))>);

/// Bars side by side, one panel each; `None` when there is nothing to draw.
fn bar_panels(title: &str, y_desc: &str, panels: &[Panel]) -> Result<Option<String>> {
    if panels.is_empty() {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let areas = root.split_evenly((1, panels.len()));
        for ((title, stats), area) in panels.iter().zip(areas.iter()) {
            let ymax = stats.iter().map(|s| s.2 .2).fold(1.0, f64::max) * 1.15;
            // A segmented 0..k has k + 1 slots: one per bar.
            let n = stats.len() as u32;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((0u32..n.max(2) - 1).into_segmented(), 0f64..ymax)
                .map_err(err)?;
            let names: Vec<String> = stats.iter().map(|s| s.0.clone()).collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_desc(y_desc)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => {
                        names.get(*i as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                })
                .draw()
                .map_err(err)?;
            for (i, (_, stack, (m, lo, hi))) in stats.iter().enumerate() {
                let i = i as u32;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *m),
                    ],
                    color(*stack).filled(),
                );
                bar.set_margin(0, 0, 8, 8);
                chart.draw_series(std::iter::once(bar)).map_err(err)?;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![
                            (SegmentValue::CenterOf(i), *lo),
                            (SegmentValue::CenterOf(i), *hi),
                        ],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{m:.0}"),
                        (SegmentValue::CenterOf(i), *hi + ymax * 0.02),
                        ("sans-serif", 13),
                    )))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

fn size_mb(setting: &str) -> Option<f64> {
    setting.strip_suffix(" MB")?.trim().parse().ok()
}

/// local-cache: median download time per size, one line per stack.
pub fn download_time(records: &[Record]) -> Result<Option<String>> {
    let all = groups(records);
    let mut lines: Vec<(Stack, Vec<(f64, f64)>)> = Vec::new();
    for g in all.iter().filter(|g| g.scenario == Scenario::LocalCache) {
        let (Some(mb), Some((secs, _, _))) = (size_mb(g.setting), g.stat(|r| r.seconds)) else {
            continue;
        };
        match lines.iter_mut().find(|l| l.0 == g.stack) {
            Some(l) => l.1.push((mb, secs)),
            None => lines.push((g.stack, vec![(mb, secs)])),
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    for l in &mut lines {
        l.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let pts = lines.iter().flat_map(|l| l.1.iter());
    let (xmin, xmax, ymin, ymax) = pts.fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), (x, y)| (a.min(*x), b.max(*x), c.min(*y), d.max(*y)),
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "local-cache: download time per size (median)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (xmin * 0.7..xmax * 1.4).log_scale(),
                (ymin.max(1e-4) * 0.7..ymax * 1.4).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("file size (MB)")
            .y_desc("download time (s)")
            .draw()
            .map_err(err)?;
        for (stack, pts) in &lines {
            let c = color(*stack);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(stack.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

/// handover: MB received over time, the first successful run of each
/// stack, with the outage of the first of them shaded.
pub fn handover(records: &[Record]) -> Result<Option<String>> {
    let mut runs: Vec<&Record> = Vec::new();
    for r in records.iter().filter(|r| {
        r.scenario == Scenario::Handover && r.status == Status::Ok && !r.timeline.is_empty()
    }) {
        if !runs.iter().any(|x| x.stack == r.stack) {
            runs.push(r);
        }
    }
    if runs.is_empty() {
        return Ok(None);
    }
    let tmax = runs
        .iter()
        .filter_map(|r| r.timeline.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let mbmax = runs
        .iter()
        .filter_map(|r| r.timeline.last().map(|p| p.1 as f64 / 1e6))
        .fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "handover: bytes received while link 1 goes down and back",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..tmax * 1.05, 0f64..mbmax * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first byte")
            .y_desc("MB received")
            .draw()
            .map_err(err)?;
        if let Some((down, up)) = runs.iter().find_map(|r| r.outage) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(down, 0.0), (up, mbmax * 1.1)],
                    RGBColor(255, 200, 200).mix(0.5).filled(),
                )))
                .map_err(err)?
                .label("link 1 down")
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 20, y + 5)],
                        RGBColor(255, 200, 200).filled(),
                    )
                });
        }
        for r in &runs {
            let c = color(r.stack);
            chart
                .draw_series(LineSeries::new(
                    std::iter::once((0.0, 0.0))
                        .chain(r.timeline.iter().map(|(t, b)| (*t, *b as f64 / 1e6))),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!(
                    "{} (stall {:.2} s)",
                    r.stack.label(),
                    r.stall_s.unwrap_or(f64::NAN)
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::output::tests::{rec, sample};

    /// The SVG backend writes each label on a line of its own.
    fn has_text(svg: &str, label: &str) -> bool {
        svg.contains(&format!(">\n{label}\n</text>"))
    }

    #[test]
    fn throughput_plot_has_a_bar_and_label_per_stack() {
        let svg = throughput(&sample()).unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for label in [
            "tcp",
            "native",
            "mptcpize",
            "1870",
            "two-gateways (2 x 1000 Mbit/s)",
        ] {
            assert!(has_text(&svg, label), "no {label:?} in the plot");
        }
        // Skipped stacks get no bar.
        assert!(!has_text(&svg, "lkl"));
        // Native's bar colour appears (one bar).
        assert_eq!(svg.matches("fill=\"#1F77B4\"").count(), 1, "{svg}");
    }

    #[test]
    fn download_plot_has_a_line_per_stack_and_handover_the_outage() {
        let mut recs = vec![
            rec(Scenario::LocalCache, Stack::Tcp, "1 MB", 1, 900.0),
            rec(Scenario::LocalCache, Stack::Tcp, "10 MB", 1, 950.0),
            rec(Scenario::LocalCache, Stack::Native, "1 MB", 1, 1500.0),
            rec(Scenario::LocalCache, Stack::Native, "10 MB", 1, 1800.0),
        ];
        let svg = download_time(&recs).unwrap().unwrap();
        assert!(has_text(&svg, "TCP, one link"));
        assert!(has_text(&svg, "MPTCP via dropshim (native)"));
        assert!(has_text(&svg, "file size (MB)"));
        // Per stack: its line and its legend mark in its colour, 2 points.
        for colour in ["#787878", "#1F77B4"] {
            let lines = svg
                .lines()
                .filter(|l| l.contains("<polyline") && l.contains(colour))
                .count();
            assert_eq!(lines, 2, "{colour}");
            let points = svg
                .lines()
                .filter(|l| l.contains("<circle") && l.contains(colour))
                .count();
            assert_eq!(points, 2, "{colour}");
        }
        assert!(handover(&recs).unwrap().is_none());
        recs.extend(sample());
        let svg = handover(&recs).unwrap().unwrap();
        assert!(has_text(&svg, "link 1 down"));
        assert!(has_text(&svg, "MPTCP via dropshim (native) (stall 0.42 s)"));
    }

    #[test]
    fn no_results_no_plots() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_all(dir.path(), &sample()).unwrap();
        assert!(dir.path().join("throughput.svg").is_file());
        assert!(dir.path().join("handover.svg").is_file());
    }
}
