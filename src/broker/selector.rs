//! JMS message selectors (the SQL-92 subset of the JMS spec), as ActiveMQ
//! evaluates them: comparisons, arithmetic, `AND`/`OR`/`NOT` with SQL's
//! three-valued logic, `BETWEEN`, `IN`, `LIKE … ESCAPE`, `IS [NOT] NULL`,
//! over message properties and the JMS headers (`JMSPriority`, `JMSType`,
//! `JMSCorrelationID`, `JMSMessageID`, `JMSTimestamp`, `JMSDeliveryMode`,
//! `JMSExpiration`). A selector is parsed once, at subscribe time.
//!
//! STOMP subscriptions compare string properties with numbers by converting
//! them (ActiveMQ's `convert_string_expressions:`), since every STOMP
//! header is a string.

use crate::broker::message::{Message, PropValue};

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Lit(Val),
    Ident(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(&'static str, Box<Expr>, Box<Expr>),
    Arith(char, Box<Expr>, Box<Expr>),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    In(Box<Expr>, Vec<String>, bool),
    Like(Box<Expr>, String, Option<char>, bool),
    IsNull(Box<Expr>, bool),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Long(i64),
    Double(f64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

/// A parsed selector.
#[derive(Debug)]
pub struct Selector {
    text: String,
    expr: Expr,
    convert_strings: bool,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\'') if c.get(i + 1) == Some(&'\'') => {
                        v.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&x) => {
                        v.push(x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(v));
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < c.len()
                && (c[i].is_ascii_alphanumeric()
                    || c[i] == '.'
                    || ((c[i] == '+' || c[i] == '-') && matches!(c[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            let text: String = c[start..i].iter().collect();
            let t = text.trim_end_matches(['l', 'L', 'f', 'F', 'd', 'D']);
            if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                out.push(Tok::Long(
                    i64::from_str_radix(hex, 16).map_err(|_| format!("bad number {text}"))?,
                ));
            } else if let Ok(v) = t.parse::<i64>() {
                out.push(Tok::Long(v));
            } else {
                out.push(Tok::Double(
                    t.parse::<f64>().map_err(|_| format!("bad number {text}"))?,
                ));
            }
        } else if ch.is_alphabetic() || ch == '_' || ch == '$' {
            let start = i;
            while i < c.len()
                && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$' || c[i] == '.')
            {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            let op = match two.as_str() {
                "<>" => Some("<>"),
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" => Some("<>"),
                _ => None,
            };
            if let Some(op) = op {
                out.push(Tok::Op(op));
                i += 2;
                continue;
            }
            out.push(match ch {
                '=' => Tok::Op("="),
                '<' => Tok::Op("<"),
                '>' => Tok::Op(">"),
                '+' => Tok::Op("+"),
                '-' => Tok::Op("-"),
                '*' => Tok::Op("*"),
                '/' => Tok::Op("/"),
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                other => return Err(format!("unexpected character '{other}'")),
            });
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(k))
    }
    fn eat_keyword(&mut self, k: &str) -> bool {
        if self.keyword(k) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_keyword(&mut self, k: &str) -> Result<(), String> {
        if self.eat_keyword(k) {
            Ok(())
        } else {
            Err(format!("expected {k}"))
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat_keyword("OR") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        while self.eat_keyword("AND") {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }
    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }
    fn string_list(&mut self) -> Result<Vec<String>, String> {
        if !self.eat(&Tok::LParen) {
            return Err("expected ( after IN".into());
        }
        let mut items = Vec::new();
        loop {
            match self.toks.get(self.pos).cloned() {
                Some(Tok::Str(s)) => {
                    items.push(s);
                    self.pos += 1;
                }
                _ => return Err("IN takes a list of string literals".into()),
            }
            if self.eat(&Tok::RParen) {
                return Ok(items);
            }
            if !self.eat(&Tok::Comma) {
                return Err("expected , or ) in IN list".into());
            }
        }
    }
    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.additive()?;
        if let Some(Tok::Op(op)) = self.peek().cloned() {
            if matches!(op, "=" | "<>" | "<" | ">" | "<=" | ">=") {
                self.pos += 1;
                let right = self.additive()?;
                return Ok(Expr::Cmp(op, Box::new(left), Box::new(right)));
            }
        }
        if self.eat_keyword("IS") {
            let negated = self.eat_keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull(Box::new(left), negated));
        }
        let negated = self.eat_keyword("NOT");
        if self.eat_keyword("BETWEEN") {
            let lo = self.additive()?;
            self.expect_keyword("AND")?;
            let hi = self.additive()?;
            return Ok(Expr::Between(
                Box::new(left),
                Box::new(lo),
                Box::new(hi),
                negated,
            ));
        }
        if self.eat_keyword("IN") {
            return Ok(Expr::In(Box::new(left), self.string_list()?, negated));
        }
        if self.eat_keyword("LIKE") {
            let pattern = match self.toks.get(self.pos).cloned() {
                Some(Tok::Str(s)) => s,
                _ => return Err("LIKE takes a string literal".into()),
            };
            self.pos += 1;
            let escape = if self.eat_keyword("ESCAPE") {
                match self.toks.get(self.pos).cloned() {
                    Some(Tok::Str(s)) if s.chars().count() == 1 => {
                        self.pos += 1;
                        s.chars().next()
                    }
                    _ => return Err("ESCAPE takes one character".into()),
                }
            } else {
                None
            };
            return Ok(Expr::Like(Box::new(left), pattern, escape, negated));
        }
        if negated {
            return Err("expected BETWEEN, IN or LIKE after NOT".into());
        }
        Ok(left)
    }
    fn additive(&mut self) -> Result<Expr, String> {
        let mut e = self.multiplicative()?;
        loop {
            match self.peek() {
                Some(Tok::Op("+")) => {
                    self.pos += 1;
                    e = Expr::Arith('+', Box::new(e), Box::new(self.multiplicative()?));
                }
                Some(Tok::Op("-")) => {
                    self.pos += 1;
                    e = Expr::Arith('-', Box::new(e), Box::new(self.multiplicative()?));
                }
                _ => return Ok(e),
            }
        }
    }
    fn multiplicative(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op("*")) => {
                    self.pos += 1;
                    e = Expr::Arith('*', Box::new(e), Box::new(self.unary()?));
                }
                Some(Tok::Op("/")) => {
                    self.pos += 1;
                    e = Expr::Arith('/', Box::new(e), Box::new(self.unary()?));
                }
                _ => return Ok(e),
            }
        }
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat(&Tok::Op("-")) {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat(&Tok::Op("+")) {
            return self.unary();
        }
        self.primary()
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of selector")?;
        self.pos += 1;
        Ok(match t {
            Tok::LParen => {
                let e = self.or()?;
                if !self.eat(&Tok::RParen) {
                    return Err("expected )".into());
                }
                e
            }
            Tok::Str(s) => Expr::Lit(Val::Str(s)),
            Tok::Long(v) => Expr::Lit(Val::Long(v)),
            Tok::Double(v) => Expr::Lit(Val::Double(v)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("TRUE") => Expr::Lit(Val::Bool(true)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("FALSE") => Expr::Lit(Val::Bool(false)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("NULL") => Expr::Lit(Val::Null),
            Tok::Ident(s)
                if ["AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "IS", "ESCAPE"]
                    .iter()
                    .any(|k| s.eq_ignore_ascii_case(k)) =>
            {
                return Err(format!("unexpected keyword {s}"))
            }
            Tok::Ident(s) => Expr::Ident(s),
            other => return Err(format!("unexpected {other:?}")),
        })
    }
}

impl Selector {
    /// Parses a selector; the error text is for an InvalidSelectorException.
    /// A selector written `convert_string_expressions:…` (as ActiveMQ's
    /// STOMP connector passes them on) converts strings to numbers.
    pub fn parse(text: &str, convert_strings: bool) -> Result<Selector, String> {
        const CONVERT: &str = "convert_string_expressions:";
        let (body, convert_strings) = match text.strip_prefix(CONVERT) {
            Some(rest) => (rest, true),
            None => (text, convert_strings),
        };
        let toks = tokenize(body)?;
        let mut p = Parser { toks, pos: 0 };
        let expr = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected {:?}", p.toks[p.pos]));
        }
        Ok(Selector {
            text: if convert_strings {
                format!("{CONVERT}{body}")
            } else {
                body.to_string()
            },
            expr,
            convert_strings,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when the message is selected (unknown counts as not selected).
    pub fn matches(&self, m: &Message) -> bool {
        self.truth(&self.expr, m) == Some(true)
    }

    fn ident(&self, name: &str, m: &Message) -> Val {
        match name {
            "JMSPriority" => Val::Long(m.priority as i64),
            "JMSTimestamp" => Val::Long(m.timestamp),
            "JMSExpiration" => Val::Long(m.expiration),
            "JMSDeliveryMode" => Val::Str(
                if m.persistent {
                    "PERSISTENT"
                } else {
                    "NON_PERSISTENT"
                }
                .into(),
            ),
            "JMSMessageID" => Val::Str(m.id.to_string()),
            "JMSCorrelationID" => m
                .extras()
                .correlation_id
                .as_ref()
                .map_or(Val::Null, |c| Val::Str(c.to_string())),
            "JMSType" => m
                .extras()
                .jms_type
                .as_ref()
                .map_or(Val::Null, |t| Val::Str(t.to_string())),
            _ => match m.property(name) {
                None => Val::Null,
                Some(PropValue::Bool(b)) => Val::Bool(*b),
                Some(PropValue::Byte(v)) => Val::Long(*v as i64),
                Some(PropValue::Short(v)) => Val::Long(*v as i64),
                Some(PropValue::Int(v)) => Val::Long(*v as i64),
                Some(PropValue::Long(v)) => Val::Long(*v),
                Some(PropValue::Float(v)) => Val::Double(*v as f64),
                Some(PropValue::Double(v)) => Val::Double(*v),
                Some(PropValue::String(s)) => Val::Str(s.to_string()),
            },
        }
    }

    fn value(&self, e: &Expr, m: &Message) -> Val {
        match e {
            Expr::Lit(v) => v.clone(),
            Expr::Ident(n) => self.ident(n, m),
            Expr::Neg(x) => match self.number(&self.value(x, m)) {
                Some(Val::Long(v)) => Val::Long(-v),
                Some(Val::Double(v)) => Val::Double(-v),
                _ => Val::Null,
            },
            Expr::Arith(op, a, b) => {
                let (a, b) = (
                    self.number(&self.value(a, m)),
                    self.number(&self.value(b, m)),
                );
                match (a, b) {
                    (Some(Val::Long(x)), Some(Val::Long(y))) if *op != '/' => match op {
                        '+' => Val::Long(x.wrapping_add(y)),
                        '-' => Val::Long(x.wrapping_sub(y)),
                        _ => Val::Long(x.wrapping_mul(y)),
                    },
                    (Some(x), Some(y)) => {
                        let (x, y) = (as_f64(&x), as_f64(&y));
                        Val::Double(match op {
                            '+' => x + y,
                            '-' => x - y,
                            '*' => x * y,
                            _ => x / y,
                        })
                    }
                    _ => Val::Null,
                }
            }
            other => match self.truth(other, m) {
                Some(b) => Val::Bool(b),
                None => Val::Null,
            },
        }
    }

    /// A numeric view of a value (strings too, for STOMP selectors).
    fn number(&self, v: &Val) -> Option<Val> {
        match v {
            Val::Long(_) | Val::Double(_) => Some(v.clone()),
            Val::Str(s) if self.convert_strings => {
                let s = s.trim();
                s.parse::<i64>()
                    .map(Val::Long)
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().map(Val::Double))
            }
            _ => None,
        }
    }

    fn truth(&self, e: &Expr, m: &Message) -> Option<bool> {
        match e {
            Expr::Not(x) => self.truth(x, m).map(|b| !b),
            Expr::And(a, b) => match (self.truth(a, m), self.truth(b, m)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Expr::Or(a, b) => match (self.truth(a, m), self.truth(b, m)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Expr::Cmp(op, a, b) => self.compare(op, &self.value(a, m), &self.value(b, m)),
            Expr::Between(x, lo, hi, negated) => {
                let v = self.value(x, m);
                let r = match (
                    self.compare(">=", &v, &self.value(lo, m)),
                    self.compare("<=", &v, &self.value(hi, m)),
                ) {
                    (Some(a), Some(b)) => Some(a && b),
                    _ => None,
                };
                r.map(|b| b != *negated)
            }
            Expr::In(x, items, negated) => match self.value(x, m) {
                Val::Str(s) => Some(items.contains(&s) != *negated),
                _ => None,
            },
            Expr::Like(x, pattern, escape, negated) => match self.value(x, m) {
                Val::Str(s) => Some(like(&s, pattern, *escape) != *negated),
                _ => None,
            },
            Expr::IsNull(x, negated) => Some((self.value(x, m) == Val::Null) != *negated),
            Expr::Lit(Val::Bool(b)) => Some(*b),
            Expr::Ident(_) => match self.value(e, m) {
                Val::Bool(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    fn compare(&self, op: &str, a: &Val, b: &Val) -> Option<bool> {
        if *a == Val::Null || *b == Val::Null {
            return None;
        }
        let ord = match (a, b) {
            (Val::Str(x), Val::Str(y)) => {
                return match op {
                    "=" => Some(x == y),
                    "<>" => Some(x != y),
                    _ => None,
                }
            }
            (Val::Bool(x), Val::Bool(y)) => {
                return match op {
                    "=" => Some(x == y),
                    "<>" => Some(x != y),
                    _ => None,
                }
            }
            _ => {
                let (x, y) = (self.number(a)?, self.number(b)?);
                match (&x, &y) {
                    (Val::Long(p), Val::Long(q)) => p.cmp(q),
                    _ => as_f64(&x).partial_cmp(&as_f64(&y))?,
                }
            }
        };
        Some(match op {
            "=" => ord.is_eq(),
            "<>" => !ord.is_eq(),
            "<" => ord.is_lt(),
            ">" => ord.is_gt(),
            "<=" => ord.is_le(),
            _ => ord.is_ge(),
        })
    }
}

fn as_f64(v: &Val) -> f64 {
    match v {
        Val::Long(x) => *x as f64,
        Val::Double(x) => *x,
        _ => f64::NAN,
    }
}

/// SQL LIKE: `%` any run, `_` one character, `escape` makes them literal.
fn like(s: &str, pattern: &str, escape: Option<char>) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Lit(char),
    }
    let mut pat = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        if Some(c) == escape {
            if let Some(n) = it.next() {
                pat.push(P::Lit(n));
            }
        } else if c == '%' {
            pat.push(P::Any);
        } else if c == '_' {
            pat.push(P::One);
        } else {
            pat.push(P::Lit(c));
        }
    }
    let s: Vec<char> = s.chars().collect();
    // Dynamic programming over (pattern, text) positions.
    let mut dp = vec![false; s.len() + 1];
    dp[0] = true;
    for p in &pat {
        let mut next = vec![false; s.len() + 1];
        match p {
            P::Any => {
                let mut any = false;
                for j in 0..=s.len() {
                    any |= dp[j];
                    next[j] = any;
                }
            }
            P::One => {
                next[1..=s.len()].copy_from_slice(&dp[..s.len()]);
            }
            P::Lit(c) => {
                for j in 1..=s.len() {
                    next[j] = dp[j - 1] && s[j - 1] == *c;
                }
            }
        }
        dp = next;
    }
    dp[s.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::destination::Destination;
    use crate::broker::message::{BodyKind, MessageId};
    use std::sync::Arc;

    fn msg(props: Vec<(&str, PropValue)>) -> Message {
        let mut m = Message::new(
            MessageId {
                producer: Arc::from("ID:x:1:1"),
                seq: 1,
            },
            Destination::queue("q"),
            BodyKind::Text,
            bytes::Bytes::new(),
        );
        m.properties = props.into_iter().map(|(k, v)| (k.into(), v)).collect();
        m.priority = 7;
        m.extras_mut().jms_type = Some("order".into());
        m
    }

    fn sel(s: &str, m: &Message) -> bool {
        Selector::parse(s, false)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .matches(m)
    }

    #[test]
    fn evaluates_the_jms_selector_language() {
        let m = msg(vec![
            ("color", PropValue::String("red".into())),
            ("n", PropValue::Int(3)),
            ("price", PropValue::Double(9.5)),
            ("ok", PropValue::Bool(true)),
        ]);
        for (s, want) in [
            ("color = 'red' AND n > 0", true),
            ("color = 'blue' OR n >= 3", true),
            ("NOT color = 'red'", false),
            ("color <> 'red'", false),
            ("n BETWEEN 1 AND 3", true),
            ("n NOT BETWEEN 1 AND 3", false),
            ("color IN ('green', 'red')", true),
            ("color NOT IN ('green', 'red')", false),
            ("color LIKE 'r%'", true),
            ("color LIKE '_e_'", true),
            ("color LIKE 'x%'", false),
            ("missing IS NULL", true),
            ("color IS NOT NULL", true),
            ("missing = 'x'", false),
            ("NOT missing = 'x'", false),
            ("missing = 'x' OR ok", true),
            ("price * 2 = 19", true),
            ("n + 1.5 > 4", true),
            ("-n < 0", true),
            ("n / 2 = 1.5", true),
            ("JMSPriority > 5 AND JMSType = 'order'", true),
            ("JMSDeliveryMode = 'NON_PERSISTENT'", true),
            ("ok = TRUE", true),
            ("(n = 3 OR n = 4) AND color = 'red'", true),
            ("n = 0x3", true),
        ] {
            assert_eq!(sel(s, &m), want, "{s}");
        }
        let under = msg(vec![("code", PropValue::String("a_b".into()))]);
        assert!(sel("code LIKE 'a\\_b' ESCAPE '\\'", &under));
        assert!(!sel("code LIKE 'a\\_c' ESCAPE '\\'", &under));
    }

    #[test]
    fn stomp_selectors_compare_strings_as_numbers() {
        let m = msg(vec![("n", PropValue::String("42".into()))]);
        assert!(!Selector::parse("n > 10", false).unwrap().matches(&m));
        assert!(Selector::parse("n > 10", true).unwrap().matches(&m));
        assert!(Selector::parse("n = '42'", true).unwrap().matches(&m));
    }

    #[test]
    fn bad_selectors_are_refused() {
        for s in [
            "",
            "color =",
            "color = 'x",
            "AND",
            "n BETWEEN 1",
            "color IN (1)",
            "a ! b",
            "(n = 1",
        ] {
            assert!(Selector::parse(s, false).is_err(), "{s}");
        }
    }
}
