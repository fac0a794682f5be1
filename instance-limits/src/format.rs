//! The committed table format (`data/instance-limits.tsv`): parser and renderer.
//!
//! This file is compiled twice: as the public module `instance_limits::format`
//! and, through `#[path]`, inside `build.rs`, which uses [`parse`] to turn the
//! TSV into the static table. It therefore depends on `std` only.
//!
//! The format is described in the crate documentation. [`parse`] accepts only
//! canonical text (every line must re-render byte for byte), so
//! `render(&parse(text)?)? == text` holds for every accepted `text`, and a
//! writer that builds [`Row`]s and calls [`render`] produces the same bytes as
//! `gen/gen_limits.py`.

use std::fmt;

/// Column names, in order. The header line is these joined by a TAB.
pub const COLUMNS: [&str; 9] = [
    "instance_type",
    "enis",
    "default_network_card_index",
    "network_cards",
    "ipv4_per_eni",
    "ipv6_per_eni",
    "hypervisor",
    "bare_metal",
    "vcpus",
];

/// The first line of the file (without its trailing LF).
pub const HEADER: &str = "instance_type\tenis\tdefault_network_card_index\tnetwork_cards\tipv4_per_eni\tipv6_per_eni\thypervisor\tbare_metal\tvcpus";

/// The three hypervisor spellings the table may contain.
pub const HYPERVISORS: [&str; 3] = ["nitro", "xen", "unknown"];

/// One table line, in owned form (what a generator builds, what `build.rs` reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// EC2 instance type name, e.g. `m5.large`.
    pub instance_type: String,
    /// Max ENIs on the default network card.
    pub enis: u32,
    /// `NetworkInfo.DefaultNetworkCardIndex`.
    pub default_network_card_index: u32,
    /// `(index, max_enis)` for every network card, sorted by index, indexes unique.
    pub network_cards: Vec<(u32, u32)>,
    /// `NetworkInfo.Ipv4AddressesPerInterface`.
    pub ipv4_per_eni: u32,
    /// `NetworkInfo.Ipv6AddressesPerInterface` (0 when absent).
    pub ipv6_per_eni: u32,
    /// `nitro`, `xen` or `unknown`; see [`hypervisor_from_api`].
    pub hypervisor: String,
    /// `BareMetal` (false when absent).
    pub bare_metal: bool,
    /// `VCpuInfo.DefaultVCpus` (0 when absent).
    pub vcpus: u32,
}

/// Why a table could not be parsed or rendered. `line` is 1-based (0 = whole table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "instance-limits table: {}", self.message)
        } else {
            write!(
                f,
                "instance-limits table line {}: {}",
                self.line, self.message
            )
        }
    }
}

impl std::error::Error for FormatError {}

fn err(line: usize, message: impl Into<String>) -> FormatError {
    FormatError {
        line,
        message: message.into(),
    }
}

/// Maps the API's `Hypervisor` field to the table spelling: `nitro` and `xen`
/// are kept, anything else (including absent, as for metal types) is `unknown`.
pub fn hypervisor_from_api(value: Option<&str>) -> &'static str {
    match value {
        Some("nitro") => "nitro",
        Some("xen") => "xen",
        _ => "unknown",
    }
}

/// True if `name` is acceptable as an instance type name in the table:
/// non-empty, at most 64 bytes, ASCII letters, digits, `.`, `-` and `_` only.
pub fn valid_instance_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

impl Row {
    /// Checks the invariants of one row (not ordering across rows).
    pub fn validate(&self) -> Result<(), String> {
        if !valid_instance_type_name(&self.instance_type) {
            return Err(format!(
                "invalid instance type name {:?}",
                self.instance_type
            ));
        }
        if !HYPERVISORS.contains(&self.hypervisor.as_str()) {
            return Err(format!(
                "{}: hypervisor must be nitro, xen or unknown, not {:?}",
                self.instance_type, self.hypervisor
            ));
        }
        if self.network_cards.is_empty() {
            return Err(format!("{}: no network cards", self.instance_type));
        }
        if self.network_cards.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(format!(
                "{}: network cards must be sorted by index without duplicates",
                self.instance_type
            ));
        }
        match self
            .network_cards
            .iter()
            .find(|(index, _)| *index == self.default_network_card_index)
        {
            None => Err(format!(
                "{}: default network card {} is not listed",
                self.instance_type, self.default_network_card_index
            )),
            Some((_, max)) if *max != self.enis => Err(format!(
                "{}: enis {} differs from the default card's {}",
                self.instance_type, self.enis, max
            )),
            Some(_) => Ok(()),
        }
    }

    /// The row as one line, without the trailing LF.
    pub fn to_line(&self) -> String {
        let cards: Vec<String> = self
            .network_cards
            .iter()
            .map(|(index, max)| format!("{index}:{max}"))
            .collect();
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.instance_type,
            self.enis,
            self.default_network_card_index,
            cards.join(","),
            self.ipv4_per_eni,
            self.ipv6_per_eni,
            self.hypervisor,
            if self.bare_metal { "true" } else { "false" },
            self.vcpus
        )
    }
}

fn parse_u32(field: &str, what: &str, line: usize) -> Result<u32, FormatError> {
    field
        .parse::<u32>()
        .map_err(|e| err(line, format!("{what}: {field:?} is not a u32 ({e})")))
}

fn parse_line(text: &str, line: usize) -> Result<Row, FormatError> {
    let fields: Vec<&str> = text.split('\t').collect();
    let [name, enis, default_card, cards, ipv4, ipv6, hypervisor, bare_metal, vcpus] = fields[..]
    else {
        return Err(err(
            line,
            format!(
                "expected {} TAB-separated fields, found {}",
                COLUMNS.len(),
                fields.len()
            ),
        ));
    };
    let mut network_cards = Vec::new();
    for card in cards.split(',') {
        let Some((index, max)) = card.split_once(':') else {
            return Err(err(
                line,
                format!("network card {card:?} is not INDEX:MAX_ENIS"),
            ));
        };
        network_cards.push((
            parse_u32(index, "network card index", line)?,
            parse_u32(max, "network card max ENIs", line)?,
        ));
    }
    let bare_metal = match bare_metal {
        "true" => true,
        "false" => false,
        other => {
            return Err(err(
                line,
                format!("bare_metal must be true or false, not {other:?}"),
            ))
        }
    };
    let row = Row {
        instance_type: name.to_string(),
        enis: parse_u32(enis, "enis", line)?,
        default_network_card_index: parse_u32(default_card, "default_network_card_index", line)?,
        network_cards,
        ipv4_per_eni: parse_u32(ipv4, "ipv4_per_eni", line)?,
        ipv6_per_eni: parse_u32(ipv6, "ipv6_per_eni", line)?,
        hypervisor: hypervisor.to_string(),
        bare_metal,
        vcpus: parse_u32(vcpus, "vcpus", line)?,
    };
    row.validate().map_err(|m| err(line, m))?;
    if row.to_line() != text {
        return Err(err(
            line,
            "not in canonical form (leading zeros, '+', spaces?)",
        ));
    }
    Ok(row)
}

/// Parses a whole table. Requires the exact header, LF line endings, a final
/// LF, canonical fields, and names strictly increasing in byte order.
pub fn parse(text: &str) -> Result<Vec<Row>, FormatError> {
    let Some(body) = text.strip_suffix('\n') else {
        return Err(err(0, "missing final LF"));
    };
    if body.contains('\r') {
        return Err(err(0, "CR found: lines must end with LF only"));
    }
    let mut lines = body.split('\n');
    if lines.next() != Some(HEADER) {
        return Err(err(1, "header line does not match the expected columns"));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (i, text) in lines.enumerate() {
        let line = i + 2;
        let row = parse_line(text, line)?;
        if let Some(prev) = rows.last() {
            if prev.instance_type.as_bytes() >= row.instance_type.as_bytes() {
                return Err(err(
                    line,
                    format!(
                        "{} must sort after {} (rows sorted by name, no duplicates)",
                        row.instance_type, prev.instance_type
                    ),
                ));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `base` with `additions` laid over it: a row of `additions` replaces the row of `base` with the same name, or
/// is added; the result is sorted by name (byte order). How `build.rs` joins `data/instance-limits.tsv` and
/// `data/anchor-additions.tsv`.
pub fn merge(base: Vec<Row>, additions: Vec<Row>) -> Vec<Row> {
    let mut by_name: std::collections::BTreeMap<Vec<u8>, Row> = base
        .into_iter()
        .map(|r| (r.instance_type.as_bytes().to_vec(), r))
        .collect();
    for r in additions {
        by_name.insert(r.instance_type.as_bytes().to_vec(), r);
    }
    by_name.into_values().collect()
}

/// Renders rows as a table: validates each row, sorts by name (byte order),
/// drops exact duplicates, and rejects two different rows for one name.
pub fn render(rows: &[Row]) -> Result<String, FormatError> {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| a.instance_type.as_bytes().cmp(b.instance_type.as_bytes()));
    let mut out = String::with_capacity(HEADER.len() + 1 + rows.len() * 48);
    out.push_str(HEADER);
    out.push('\n');
    let mut prev: Option<&Row> = None;
    for row in sorted {
        row.validate().map_err(|m| err(0, m))?;
        if let Some(p) = prev {
            if p.instance_type == row.instance_type {
                if p == row {
                    continue;
                }
                return Err(err(
                    0,
                    format!("{} listed twice with different limits", row.instance_type),
                ));
            }
        }
        out.push_str(&row.to_line());
        out.push('\n');
        prev = Some(row);
    }
    Ok(out)
}
