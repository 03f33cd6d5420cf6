//! The OData `$filter` subset Graph's security APIs accept, parsed by a small recursive-descent
//! parser and evaluated against any item that can hand out its property values.
//!
//! Grammar (operators lowercase, as OData v4 defines them):
//! ```text
//! expr    := and_expr ("or" and_expr)*
//! and_expr:= primary ("and" primary)*
//! primary := "(" expr ")" | PROPERTY OP literal
//! OP      := eq | ne | gt | ge | lt | le
//! literal := 'string' ('' escapes a quote) | DateTimeOffset (unquoted ISO-8601) | null
//! ```
//! Each resource (alerts_v2, incidents, threat submissions) passes its own table of filterable
//! properties, so a filter on anything else is refused with the message Graph gives. Items kept
//! as JSON are evaluated through [`JsonFields`].

use crate::time;

/// The type of a filterable property, which decides which literals it may be compared with.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `Edm.String`.
    String,
    /// `Edm.DateTimeOffset`, compared at 100-ns precision.
    DateTime,
    /// An enum type; the members in declaration order (enums compare by that order).
    Enum(&'static str, &'static [&'static str]),
}

/// One filterable property of a resource.
#[derive(Debug)]
pub struct Prop {
    pub name: &'static str,
    pub kind: Kind,
}

/// A resource's filter vocabulary.
pub struct Schema {
    /// Graph's name for the entity type, used in error messages.
    pub type_name: &'static str,
    /// The documented filterable properties.
    pub filterable: &'static [Prop],
    /// Every other property of the type: filtering on these gives a different message than on a
    /// name the type does not have at all, as Graph does.
    pub other_props: &'static [&'static str],
}

/// A property value as an item reports it.
#[derive(Clone, Copy, Debug)]
pub enum Val<'a> {
    Null,
    Str(&'a str),
    Time(i64),
}

/// Anything a filter can be evaluated on.
pub trait Fields {
    /// The value of a filterable property (`Val::Null` when absent or unreadable).
    fn field(&self, name: &str) -> Val<'_>;
}

/// A JSON object seen through a schema: string members are strings, and members the schema
/// declares `DateTime` are parsed to ticks (unreadable ones are null).
pub struct JsonFields<'a> {
    pub value: &'a serde_json::Value,
    pub schema: &'a Schema,
}

impl Fields for JsonFields<'_> {
    fn field(&self, name: &str) -> Val<'_> {
        let kind = self
            .schema
            .filterable
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.kind);
        match (kind, self.value.get(name)) {
            (Some(Kind::DateTime), Some(serde_json::Value::String(s))) => {
                time::parse(s).map_or(Val::Null, Val::Time)
            }
            (Some(Kind::DateTime), _) => Val::Null,
            (_, Some(serde_json::Value::String(s))) => Val::Str(s),
            _ => Val::Null,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Gt => ord == Greater,
            Op::Ge => ord != Less,
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
        }
    }

    fn odata_kind(self) -> &'static str {
        match self {
            Op::Eq => "Equal",
            Op::Ne => "NotEqual",
            Op::Gt => "GreaterThan",
            Op::Ge => "GreaterThanOrEqual",
            Op::Lt => "LessThan",
            Op::Le => "LessThanOrEqual",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Lit {
    Null,
    Str(String),
    Time(i64),
    /// An enum member, by declaration index.
    Enum(usize),
}

/// A parsed filter.
#[derive(Debug)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        prop: &'static Prop,
        op: Op,
        lit: Lit,
    },
}

impl Expr {
    /// Whether an item matches. OData's null rules: `null eq null` holds, any other comparison
    /// with a null side is false except `ne`.
    pub fn matches(&self, item: &impl Fields) -> bool {
        match self {
            Expr::And(a, b) => a.matches(item) && b.matches(item),
            Expr::Or(a, b) => a.matches(item) || b.matches(item),
            Expr::Cmp { prop, op, lit } => {
                let v = item.field(prop.name);
                let ord = match (prop.kind, v, lit) {
                    (_, Val::Null, Lit::Null) => Some(std::cmp::Ordering::Equal),
                    (_, Val::Null, _) | (_, _, Lit::Null) => None,
                    (Kind::DateTime, Val::Time(t), Lit::Time(l)) => Some(t.cmp(l)),
                    (Kind::Enum(_, members), Val::Str(s), Lit::Enum(l)) => {
                        members.iter().position(|m| *m == s).map(|i| i.cmp(l))
                    }
                    (Kind::String, Val::Str(s), Lit::Str(l)) => Some(s.cmp(l.as_str())),
                    _ => None,
                };
                match ord {
                    Some(o) => op.holds(o),
                    None => *op == Op::Ne,
                }
            }
        }
    }

    /// The tightest inclusive range `[lo, hi]` of ticks that `prop` must lie in for the filter to
    /// hold, read from the comparisons joined by `and` at the top. Lets a store scan only that
    /// part of its time index; the filter is still evaluated on every candidate.
    pub fn time_bounds(&self, prop: &str) -> (i64, i64) {
        match self {
            Expr::And(a, b) => {
                let (alo, ahi) = a.time_bounds(prop);
                let (blo, bhi) = b.time_bounds(prop);
                (alo.max(blo), ahi.min(bhi))
            }
            Expr::Cmp {
                prop: p,
                op,
                lit: Lit::Time(t),
            } if p.name == prop => match op {
                Op::Eq => (*t, *t),
                Op::Gt => (t.saturating_add(1), i64::MAX),
                Op::Ge => (*t, i64::MAX),
                Op::Lt => (i64::MIN, t.saturating_sub(1)),
                Op::Le => (i64::MIN, *t),
                Op::Ne => (i64::MIN, i64::MAX),
            },
            _ => (i64::MIN, i64::MAX),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Word(String),
    Str(String),
    /// An unquoted literal starting with a digit or a sign: a date-time or a number.
    Bare(String),
}

fn tokenize(input: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            out.push((i, Tok::LParen));
            i += 1;
        } else if c == b')' {
            out.push((i, Tok::RParen));
            i += 1;
        } else if c == b'\'' {
            let start = i;
            let mut s = String::new();
            i += 1;
            loop {
                match input[i..].find('\'') {
                    None => return Err(format!("Syntax error: unterminated string literal at position {start} in '{input}'.")),
                    Some(rel) => {
                        s.push_str(&input[i..i + rel]);
                        i += rel + 1;
                        // '' inside a literal is an escaped quote.
                        if b.get(i) == Some(&b'\'') {
                            s.push('\'');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            out.push((start, Tok::Str(s)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'/'))
            {
                i += 1;
            }
            out.push((start, Tok::Word(input[start..i].to_string())));
        } else if c.is_ascii_digit() || c == b'-' || c == b'+' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b':' | b'.' | b'-' | b'+'))
            {
                i += 1;
            }
            out.push((start, Tok::Bare(input[start..i].to_string())));
        } else {
            return Err(format!("Syntax error at position {i} in '{input}'."));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    input: &'a str,
    toks: Vec<(usize, Tok)>,
    pos: usize,
    schema: &'a Schema,
}

impl Parser<'_> {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some((_, Tok::Word(x))) if x == w)
    }

    fn err_here(&self) -> String {
        let at = self
            .toks
            .get(self.pos)
            .map_or(self.input.len(), |(p, _)| *p);
        format!("Syntax error at position {at} in '{}'.", self.input)
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.peek_word("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.primary()?;
        while self.peek_word("and") {
            self.pos += 1;
            let right = self.primary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.toks.get(self.pos) {
            Some((_, Tok::LParen)) => {
                self.pos += 1;
                let e = self.or_expr()?;
                match self.toks.get(self.pos) {
                    Some((_, Tok::RParen)) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(self.err_here()),
                }
            }
            Some((_, Tok::Word(name))) => {
                let name = name.clone();
                self.pos += 1;
                let prop = self.property(&name)?;
                let op = match self.toks.get(self.pos) {
                    Some((_, Tok::Word(w))) => match w.as_str() {
                        "eq" => Op::Eq,
                        "ne" => Op::Ne,
                        "gt" => Op::Gt,
                        "ge" => Op::Ge,
                        "lt" => Op::Lt,
                        "le" => Op::Le,
                        _ => return Err(self.err_here()),
                    },
                    _ => return Err(self.err_here()),
                };
                self.pos += 1;
                let lit = self.literal(prop, op)?;
                self.pos += 1;
                Ok(Expr::Cmp { prop, op, lit })
            }
            _ => Err(self.err_here()),
        }
    }

    fn property(&self, name: &str) -> Result<&'static Prop, String> {
        if let Some(p) = self.schema.filterable.iter().find(|p| p.name == name) {
            return Ok(p);
        }
        if self.schema.other_props.contains(&name) {
            Err(format!("Invalid filter clause: The property '{name}' cannot be used in the $filter query option."))
        } else {
            Err(format!(
                "Invalid filter clause: Could not find a property named '{name}' on type '{}'.",
                self.schema.type_name
            ))
        }
    }

    fn literal(&self, prop: &Prop, op: Op) -> Result<Lit, String> {
        let mismatch = |found: &str| {
            let want = match prop.kind {
                Kind::String => "Edm.String",
                Kind::DateTime => "Edm.DateTimeOffset",
                Kind::Enum(t, _) => t,
            };
            format!(
                "Invalid filter clause: A binary operator with incompatible types was detected. Found operand types '{want}' and '{found}' for operator kind '{}'.",
                op.odata_kind()
            )
        };
        match (self.toks.get(self.pos), prop.kind) {
            (Some((_, Tok::Word(w))), _) if w == "null" => Ok(Lit::Null),
            (Some((_, Tok::Str(s))), Kind::String) => Ok(Lit::Str(s.clone())),
            (Some((_, Tok::Str(s))), Kind::Enum(t, members)) => members
                .iter()
                .position(|m| m == s)
                .map(Lit::Enum)
                .ok_or_else(|| format!("Invalid filter clause: The string '{s}' is not a valid enumeration type constant for '{t}'.")),
            (Some((_, Tok::Str(_))), Kind::DateTime) => Err(mismatch("Edm.String")),
            (Some((_, Tok::Bare(s))), kind) => match time::parse(s) {
                Some(t) if matches!(kind, Kind::DateTime) => Ok(Lit::Time(t)),
                Some(_) => Err(mismatch("Edm.DateTimeOffset")),
                None if s.bytes().all(|c| c.is_ascii_digit() || c == b'-' || c == b'+') => {
                    Err(mismatch("Edm.Int32"))
                }
                None => Err(format!(
                    "Invalid filter clause: Unrecognized literal '{s}' in '{}'.",
                    self.input
                )),
            },
            _ => Err(self.err_here()),
        }
    }
}

/// Parses a `$filter` value (already percent-decoded). The error is the message for a 400.
pub fn parse(input: &str, schema: &Schema) -> Result<Expr, String> {
    let toks = tokenize(input)?;
    let mut p = Parser {
        input,
        toks,
        pos: 0,
        schema,
    };
    let e = p.or_expr()?;
    if p.pos != p.toks.len() {
        return Err(p.err_here());
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    static PROPS: &[Prop] = &[
        Prop {
            name: "lastUpdateDateTime",
            kind: Kind::DateTime,
        },
        Prop {
            name: "severity",
            kind: Kind::Enum(
                "microsoft.graph.security.alertSeverity",
                &["unknown", "informational", "low", "medium", "high"],
            ),
        },
        Prop {
            name: "assignedTo",
            kind: Kind::String,
        },
    ];
    static SCHEMA: Schema = Schema {
        type_name: "t",
        filterable: PROPS,
        other_props: &["title"],
    };

    struct Item(i64, &'static str, Option<&'static str>);
    impl Fields for Item {
        fn field(&self, name: &str) -> Val<'_> {
            match name {
                "lastUpdateDateTime" => Val::Time(self.0),
                "severity" => Val::Str(self.1),
                "assignedTo" => self.2.map_or(Val::Null, Val::Str),
                _ => Val::Null,
            }
        }
    }

    fn t(s: &str) -> i64 {
        time::parse(s).unwrap_or_default()
    }

    #[test]
    fn precedence_and_parentheses() {
        let e = parse(
            "severity eq 'high' or severity eq 'low' and assignedTo eq 'x'",
            &SCHEMA,
        );
        let e = e.unwrap_or_else(|m| panic!("{m}"));
        assert!(e.matches(&Item(0, "high", None)));
        assert!(!e.matches(&Item(0, "low", None)));
        let e = parse(
            "(severity eq 'high' or severity eq 'low') and assignedTo eq null",
            &SCHEMA,
        );
        let e = e.unwrap_or_else(|m| panic!("{m}"));
        assert!(e.matches(&Item(0, "low", None)));
        assert!(!e.matches(&Item(0, "low", Some("x"))));
    }

    #[test]
    fn times_compare_at_100ns() {
        let e = parse("lastUpdateDateTime lt 2024-01-01T12:00:01Z and lastUpdateDateTime ge 2024-01-01T12:00:00.0000001Z", &SCHEMA);
        let e = e.unwrap_or_else(|m| panic!("{m}"));
        assert!(e.matches(&Item(t("2024-01-01T12:00:00.9999999Z"), "low", None)));
        assert!(!e.matches(&Item(t("2024-01-01T12:00:01Z"), "low", None)));
        assert!(!e.matches(&Item(t("2024-01-01T12:00:00Z"), "low", None)));
        assert_eq!(
            e.time_bounds("lastUpdateDateTime"),
            (
                t("2024-01-01T12:00:00.0000001Z"),
                t("2024-01-01T12:00:01Z") - 1
            )
        );
    }

    #[test]
    fn enums_compare_by_declaration_order() {
        let e = parse("severity ge 'medium'", &SCHEMA).unwrap_or_else(|m| panic!("{m}"));
        assert!(e.matches(&Item(0, "high", None)));
        assert!(!e.matches(&Item(0, "low", None)));
    }

    #[test]
    fn refuses_what_graph_refuses() {
        for (f, want) in [
            ("title eq 'x'", "cannot be used"),
            ("investigationState eq 'x'", "Could not find a property"),
            ("severity eq 'critical'", "not a valid enumeration"),
            (
                "lastUpdateDateTime ge '2024-01-01T00:00:00Z'",
                "incompatible types",
            ),
            ("severity eq high", "Syntax error"),
            (
                "lastUpdateDateTime ge 2024-13-01T00:00:00Z",
                "Unrecognized literal",
            ),
            ("severity eq 'high' and", "Syntax error"),
            ("(severity eq 'high'", "Syntax error"),
            ("severity eq 'high", "unterminated"),
            ("severity EQ 'high'", "Syntax error"),
            ("", "Syntax error"),
        ] {
            match parse(f, &SCHEMA) {
                Ok(e) => panic!("{f} parsed as {e:?}"),
                Err(m) => assert!(m.contains(want), "{f}: {m}"),
            }
        }
    }
}
