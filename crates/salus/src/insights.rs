//! `GET [base]/$insights`: a small dashboard over the analytics tables (census by day,
//! encounters by class, average length of stay by class, top conditions, measure
//! results) as JSON, and each of its charts as SVG drawn on the server with `plotters`
//! (its SVG backend only) at `GET [base]/$insights/{chart}.svg`.

use crate::analytics::{fhir_error, StoreAnalytics};
use salus_analytics::measures::MEASURES;
use salus_analytics::{write_output, OutputFormat};
use salus_service::FhirError;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The charts, by name.
pub const CHARTS: [&str; 5] = [
    "census",
    "encounters-by-class",
    "length-of-stay",
    "top-conditions",
    "measures",
];

/// Days the census covers (ending at the last day with an inpatient stay).
const CENSUS_DAYS: i64 = 30;

/// Inpatient encounter classes (v3 ActCode), as in the readmission measure.
const INPATIENT: &str = "('IMP', 'ACUTE', 'NONAC')";

async fn rows(a: &StoreAnalytics, sql: &str) -> Result<Vec<Value>, FhirError> {
    let r = a.query(sql).await?;
    let mut out = Vec::new();
    write_output(&r.schema, &r.batches, OutputFormat::Json, &mut out).map_err(fhir_error)?;
    serde_json::from_slice(&out).map_err(|e| FhirError::Internal(e.to_string()))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn day_text(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The local day of a FHIR date or dateTime (`2020` → its first day).
fn day_of(s: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok());
    let y = n(0..4)?;
    let m = if s.len() >= 7 { n(5..7)? } else { 1 };
    let d = if s.len() >= 10 { n(8..10)? } else { 1 };
    Some(days_from_civil(y, m, d))
}

/// Seconds since the epoch of a FHIR dateTime with a time and zone; a date alone counts
/// as its midnight UTC.
fn seconds_of(s: &str) -> Option<i64> {
    let day = day_of(s)?;
    let Some(t) = s.get(11..) else {
        return Some(day * 86_400);
    };
    let n = |r: std::ops::Range<usize>| t.get(r).and_then(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (n(0..2)?, n(3..5)?, n(6..8)?);
    let zone = t.find(['Z', '+', '-']).map(|i| &t[i..]).unwrap_or("Z");
    let offset = match zone {
        "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let zh: i64 = z.get(1..3)?.parse().ok()?;
            let zm: i64 = z.get(4..6)?.parse().ok()?;
            sign * (zh * 3600 + zm * 60)
        }
    };
    Some(day * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn text(v: &Value) -> Option<&str> {
    v.as_str()
}

/// Inpatients present per day over the last [`CENSUS_DAYS`] days with data.
async fn census(a: &StoreAnalytics) -> Result<Vec<(String, u64)>, FhirError> {
    let stays = rows(
        a,
        &format!(
            "SELECT period_start, period_end FROM mx_encounter \
             WHERE class_code IN {INPATIENT} AND period_start IS NOT NULL"
        ),
    )
    .await?;
    let spans: Vec<(i64, i64)> = stays
        .iter()
        .filter_map(|r| {
            let start = day_of(text(&r["period_start"])?)?;
            let end = r["period_end"].as_str().and_then(day_of).unwrap_or(start);
            Some((start, end.max(start)))
        })
        .collect();
    let Some(last) = spans.iter().map(|s| s.1).max() else {
        return Ok(vec![]);
    };
    let first = last - CENSUS_DAYS + 1;
    Ok((first..=last)
        .map(|d| {
            let n = spans.iter().filter(|(s, e)| *s <= d && d <= *e).count() as u64;
            (day_text(d), n)
        })
        .collect())
}

async fn by_class(a: &StoreAnalytics) -> Result<Vec<(String, u64)>, FhirError> {
    let r = rows(
        a,
        "SELECT coalesce(class_code, '(none)') AS class, count(*) AS encounters \
         FROM mx_encounter GROUP BY 1 ORDER BY encounters DESC, class",
    )
    .await?;
    Ok(r.iter()
        .map(|r| {
            (
                r["class"].as_str().unwrap_or("").to_string(),
                r["encounters"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// Average length of stay in days, per class, over finished encounters with both ends.
async fn length_of_stay(a: &StoreAnalytics) -> Result<Vec<(String, f64, u64)>, FhirError> {
    let r = rows(
        a,
        "SELECT coalesce(class_code, '(none)') AS class, period_start, period_end \
         FROM mx_encounter WHERE status = 'finished' \
         AND period_start IS NOT NULL AND period_end IS NOT NULL",
    )
    .await?;
    let mut acc: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for row in &r {
        let (Some(s), Some(e)) = (
            row["period_start"].as_str().and_then(seconds_of),
            row["period_end"].as_str().and_then(seconds_of),
        ) else {
            continue;
        };
        if e < s {
            continue;
        }
        let entry = acc
            .entry(row["class"].as_str().unwrap_or("").to_string())
            .or_default();
        entry.0 += (e - s) as f64 / 86_400.0;
        entry.1 += 1;
    }
    let mut out: Vec<(String, f64, u64)> = acc
        .into_iter()
        .map(|(c, (sum, n))| (c, ((sum / n as f64) * 100.0).round() / 100.0, n))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(out)
}

async fn top_conditions(a: &StoreAnalytics) -> Result<Vec<Value>, FhirError> {
    rows(
        a,
        "SELECT system, code, count(DISTINCT patient_id) AS patients FROM mx_condition \
         WHERE code IS NOT NULL GROUP BY system, code ORDER BY patients DESC, code LIMIT 10",
    )
    .await
}

/// The year the measures are reported for: that of the latest encounter, else now.
async fn measure_year(a: &StoreAnalytics) -> Result<i32, FhirError> {
    let r = rows(
        a,
        "SELECT max(substr(period_start, 1, 4)) AS y FROM mx_encounter",
    )
    .await?;
    let year = r
        .first()
        .and_then(|r| r["y"].as_str())
        .and_then(|y| y.parse().ok());
    Ok(year.unwrap_or_else(|| {
        let days = salus_service::time::now_micros() / 86_400_000_000;
        civil_from_days(days).0 as i32
    }))
}

async fn measure_results(a: &StoreAnalytics) -> Result<(i32, Vec<Value>), FhirError> {
    let year = measure_year(a).await?;
    let (start, end) = (format!("{year:04}-01-01"), format!("{year:04}-12-31"));
    let mut out = vec![];
    for m in MEASURES {
        let r = a.measure(m.id, &start, &end).await?;
        let counts: serde_json::Map<String, Value> = r
            .populations
            .iter()
            .map(|p| (p.code.to_string(), json!(p.count())))
            .collect();
        out.push(json!({
            "measure": m.id,
            "title": m.title,
            "improvementNotation": m.improvement,
            "score": r.score,
            "populations": counts,
        }));
    }
    Ok((year, out))
}

/// The dashboard.
pub async fn dashboard(a: &StoreAnalytics) -> Result<Value, FhirError> {
    let census = census(a).await?;
    let classes = by_class(a).await?;
    let los = length_of_stay(a).await?;
    let conditions = top_conditions(a).await?;
    let (year, measures) = measure_results(a).await?;
    Ok(json!({
        "census": {
            "description": "inpatients (class IMP, ACUTE, NONAC) present each day, last 30 days with data",
            "days": census.iter().map(|(d, n)| json!({"day": d, "inpatients": n})).collect::<Vec<_>>(),
        },
        "encountersByClass": classes.iter().map(|(c, n)| json!({"class": c, "encounters": n})).collect::<Vec<_>>(),
        "lengthOfStayByClass": los.iter().map(|(c, d, n)| json!({"class": c, "averageDays": d, "encounters": n})).collect::<Vec<_>>(),
        "topConditions": conditions,
        "measures": {"period": {"start": format!("{year:04}-01-01"), "end": format!("{year:04}-12-31")}, "results": measures},
        "charts": CHARTS.iter().map(|c| format!("$insights/{c}.svg")).collect::<Vec<_>>(),
    }))
}

/// One chart as SVG.
pub async fn chart(a: &StoreAnalytics, name: &str) -> Result<String, FhirError> {
    let (title, y_desc, bars): (&str, &str, Vec<(String, f64)>) = match name {
        "census" => (
            "Inpatient census by day",
            "inpatients",
            census(a)
                .await?
                .into_iter()
                .map(|(d, n)| (d, n as f64))
                .collect(),
        ),
        "encounters-by-class" => (
            "Encounters by class",
            "encounters",
            by_class(a)
                .await?
                .into_iter()
                .map(|(c, n)| (c, n as f64))
                .collect(),
        ),
        "length-of-stay" => (
            "Average length of stay by class",
            "days",
            length_of_stay(a)
                .await?
                .into_iter()
                .map(|(c, d, _)| (c, d))
                .collect(),
        ),
        "top-conditions" => (
            "Top conditions",
            "patients",
            top_conditions(a)
                .await?
                .iter()
                .map(|r| {
                    (
                        r["code"].as_str().unwrap_or("").to_string(),
                        r["patients"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect(),
        ),
        "measures" => (
            "Measure scores",
            "score",
            measure_results(a)
                .await?
                .1
                .iter()
                .map(|r| {
                    (
                        r["measure"].as_str().unwrap_or("").to_string(),
                        r["score"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect(),
        ),
        other => {
            return Err(FhirError::NotFound(format!(
                "chart '{other}' (charts: {})",
                CHARTS.join(", ")
            )))
        }
    };
    bar_chart(title, y_desc, &bars).map_err(|e| FhirError::Internal(format!("chart {name}: {e}")))
}

/// A bar chart with one labelled bar per value, as SVG text. Each bar carries its label
/// and value in a `<title>`-free form plotters writes: the labels are drawn as axis text.
pub fn bar_chart(title: &str, y_desc: &str, bars: &[(String, f64)]) -> Result<String, String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
        let top = if max > 0.0 { max * 1.1 } else { 1.0 };
        let n = bars.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(90)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n).into_segmented(), 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(n.min(40))
            .x_label_formatter(&label)
            .x_label_style(
                ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    RGBColor(46, 112, 184).filled(),
                );
                r.set_margin(0, 0, 4, 4);
                r
            }))
            .map_err(|e| e.to_string())?;
        // the values above the bars, so the data can be read off the image
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                Text::new(
                    format_value(*v),
                    (SegmentValue::CenterOf(i), *v),
                    ("sans-serif", 11).into_font(),
                )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(day_text(days_from_civil(2024, 2, 29)), "2024-02-29");
        assert_eq!(day_of("2020"), Some(days_from_civil(2020, 1, 1)));
        assert_eq!(
            seconds_of("2020-01-01T10:00:00+02:00"),
            Some(days_from_civil(2020, 1, 1) * 86_400 + 8 * 3600)
        );
        assert_eq!(
            seconds_of("2020-01-01T10:00:00.5Z"),
            Some(days_from_civil(2020, 1, 1) * 86_400 + 10 * 3600)
        );
    }
}
