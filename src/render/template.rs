//! The build-time template language (see docs/TEMPLATES.md): `@{name|filter}`
//! substitutions and `#@if` / `#@elif` / `#@else` / `#@for` / `#@end` directive lines.
//! Anything else, sealer's deploy-time `{{ ... }}` included, passes through byte for byte.
//!
//! Ours rather than a general engine: directives are comment lines, so a template stays
//! valid YAML, TOML or shell before rendering; `{{ }}`, `{% %}` and `{# #}` never need
//! escaping; and the whole language is a few hundred lines that the fuzz targets cover.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Bool(bool),
    /// Ordered `key: value` pairs (extra flags, image tags by name).
    Map(Vec<(String, String)>),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Bool(b) => *b,
            Value::Map(m) => !m.is_empty(),
        }
    }

    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::List(l) => l.join("\n"),
            Value::Bool(b) => b.to_string(),
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The variables a template may use.
pub type Vars = BTreeMap<String, Value>;

/// `text` quoted and escaped for a one-line error message, cut after 60 characters so
/// that hostile input (a binary file, a megabyte-long line) cannot flood the message.
pub fn quote(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// A template that cannot be rendered, located at `file:line`.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for TemplateError {}

/// A parsed template: text lines and the blocks of directive lines.
#[derive(Debug)]
enum Node {
    /// One line of the template (with its newline), substituted when emitted.
    Text { line: usize, bytes: Vec<u8> },
    /// `#@if` / `#@elif` arms (line, condition, body) and the `#@else` body.
    If {
        arms: Vec<(usize, String, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    /// `#@for NAME in LIST` or `#@for KEY, VALUE in MAP`.
    For {
        line: usize,
        names: Vec<String>,
        source: String,
        body: Vec<Node>,
    },
}

/// A block being parsed: its directive and the nodes collected so far.
enum Open {
    If {
        /// The arms before the one being collected.
        done: Vec<(usize, String, Vec<Node>)>,
        /// The `#@if` or `#@elif` arm being collected.
        arm: (usize, String, Vec<Node>),
        otherwise: Option<Vec<Node>>,
    },
    For {
        line: usize,
        names: Vec<String>,
        source: String,
        body: Vec<Node>,
    },
}

impl Open {
    fn current(&mut self) -> &mut Vec<Node> {
        match self {
            Open::If {
                otherwise: Some(body),
                ..
            } => body,
            Open::If { arm, .. } => &mut arm.2,
            Open::For { body, .. } => body,
        }
    }

    fn close(self) -> Node {
        match self {
            Open::If {
                mut done,
                arm,
                otherwise,
            } => {
                done.push(arm);
                Node::If {
                    arms: done,
                    otherwise: otherwise.unwrap_or_default(),
                }
            }
            Open::For {
                line,
                names,
                source,
                body,
            } => Node::For {
                line,
                names,
                source,
                body,
            },
        }
    }
}

/// Renders `src` (the template file `file`, for error messages) with `vars`.
/// Every line is checked, also in branches that are not emitted and in loops over empty
/// lists, so an error in a rarely taken branch still refuses the mount.
pub fn render(file: &str, src: &[u8], vars: &Vars) -> Result<Vec<u8>, TemplateError> {
    render_bounded(file, src, vars, usize::MAX)
}

/// As [`render`], stopping with an error as soon as the output would pass `max_bytes`
/// (also within one line): a template that expands (loops in loops, a list on every
/// line) never takes more memory than the bound, however far it would go.
pub fn render_bounded(
    file: &str,
    src: &[u8],
    vars: &Vars,
    max_bytes: usize,
) -> Result<Vec<u8>, TemplateError> {
    let err = |line: usize, message: String| TemplateError {
        file: file.to_string(),
        line,
        message,
    };
    let (nodes, _) = parse(src).map_err(|(line, m)| err(line, m))?;
    let mut out = Vec::with_capacity(src.len().min(max_bytes));
    emit(&nodes, vars, Some(&mut out), max_bytes).map_err(|(line, m)| err(line, m))?;
    Ok(out)
}

/// The error of a rendering past its bound.
fn too_big(max_bytes: usize) -> String {
    format!(
        "renders to more than {} MiB (stopped there); renderings are kept in memory",
        max_bytes >> 20
    )
}

type Located<T> = Result<T, (usize, String)>;

fn parse(src: &[u8]) -> Located<(Vec<Node>, usize)> {
    let mut top: Vec<Node> = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut line_no = 0;
    for line in src.split_inclusive(|&b| b == b'\n') {
        line_no += 1;
        let trimmed = trim_start(line);
        let Some(directive) = trimmed.strip_prefix(b"#@") else {
            let node = Node::Text {
                line: line_no,
                bytes: line.to_vec(),
            };
            match stack.last_mut() {
                Some(open) => open.current().push(node),
                None => top.push(node),
            }
            continue;
        };
        let e = |m: String| (line_no, m);
        let text = std::str::from_utf8(directive)
            .map_err(|_| e("directive is not UTF-8".into()))?
            .trim();
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let rest = rest.trim();
        match word {
            "if" => {
                if rest.is_empty() {
                    return Err(e("#@if needs a condition".into()));
                }
                stack.push(Open::If {
                    done: Vec::new(),
                    arm: (line_no, rest.to_string(), Vec::new()),
                    otherwise: None,
                });
            }
            "elif" => match stack.last_mut() {
                Some(Open::If {
                    done,
                    arm,
                    otherwise: None,
                }) => {
                    if rest.is_empty() {
                        return Err(e("#@elif needs a condition".into()));
                    }
                    let next = (line_no, rest.to_string(), Vec::new());
                    done.push(std::mem::replace(arm, next));
                }
                Some(Open::If { .. }) => return Err(e("#@elif after #@else".into())),
                _ => return Err(e("#@elif without #@if".into())),
            },
            "for" => {
                let (names, source) = rest
                    .split_once(" in ")
                    .ok_or_else(|| e("expected #@for NAME in LIST".into()))?;
                let names: Vec<String> = names.split(',').map(|n| n.trim().to_string()).collect();
                if names.len() > 2 {
                    return Err(e("#@for takes one name, or KEY, VALUE".into()));
                }
                for name in &names {
                    check_name(name).map_err(e)?;
                }
                let source = source.trim().to_string();
                check_path(&source).map_err(e)?;
                stack.push(Open::For {
                    line: line_no,
                    names,
                    source,
                    body: Vec::new(),
                });
            }
            "else" | "end" if !rest.is_empty() => {
                return Err(e(format!("#@{word} takes no argument")));
            }
            "else" => match stack.last_mut() {
                Some(Open::If { otherwise, .. }) if otherwise.is_none() => {
                    *otherwise = Some(Vec::new())
                }
                Some(Open::If { .. }) => return Err(e("second #@else for one #@if".into())),
                _ => return Err(e("#@else without #@if".into())),
            },
            "end" => {
                let open = stack
                    .pop()
                    .ok_or_else(|| e("#@end without #@if or #@for".into()))?;
                let node = open.close();
                match stack.last_mut() {
                    Some(open) => open.current().push(node),
                    None => top.push(node),
                }
            }
            other => return Err(e(format!("unknown directive #@{}", quote(other)))),
        }
    }
    if let Some(open) = stack.last() {
        let what = match open {
            Open::If { .. } => "#@if",
            Open::For { .. } => "#@for",
        };
        return Err((line_no, format!("{what} is not closed by #@end")));
    }
    Ok((top, line_no))
}

/// Emits `nodes` into `out`, or only checks them when `out` is `None`; `out` never grows
/// past `max_bytes`.
fn emit(
    nodes: &[Node],
    vars: &Vars,
    mut out: Option<&mut Vec<u8>>,
    max_bytes: usize,
) -> Located<()> {
    for node in nodes {
        match node {
            Node::Text { line, bytes } => {
                let room = max_bytes - out.as_deref().map_or(0, Vec::len);
                let rendered = substitute(bytes, vars, room, max_bytes).map_err(|m| (*line, m))?;
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&rendered);
                }
            }
            Node::If { arms, otherwise } => {
                let mut taken = false;
                for (line, condition, body) in arms {
                    let holds = eval(condition, vars).map_err(|m| (*line, m))?;
                    let emit_this = holds && !taken;
                    taken |= holds;
                    emit(
                        body,
                        vars,
                        out.as_deref_mut().filter(|_| emit_this),
                        max_bytes,
                    )?;
                }
                emit(
                    otherwise,
                    vars,
                    out.as_deref_mut().filter(|_| !taken),
                    max_bytes,
                )?;
            }
            Node::For {
                line,
                names,
                source,
                body,
            } => {
                let items: Vec<(String, String)> = match (lookup(source, vars), names.len()) {
                    (Ok(Value::List(items)), 1) => {
                        items.iter().map(|i| (i.clone(), String::new())).collect()
                    }
                    (Ok(Value::Map(pairs)), 2) => pairs.clone(),
                    (Ok(Value::List(_)), _) => {
                        return Err((*line, format!("{} is a list: #@for NAME in", quote(source))))
                    }
                    (Ok(Value::Map(_)), _) => {
                        return Err((
                            *line,
                            format!("{} is a map: #@for KEY, VALUE in", quote(source)),
                        ))
                    }
                    (Ok(_), _) => {
                        return Err((*line, format!("{} is not a list or map", quote(source))))
                    }
                    (Err(m), _) => return Err((*line, m)),
                };
                let bind = |key: &str, value: &str| {
                    let mut scope = vars.clone();
                    scope.insert(names[0].clone(), Value::Str(key.to_string()));
                    if let Some(second) = names.get(1) {
                        scope.insert(second.clone(), Value::Str(value.to_string()));
                    }
                    scope
                };
                // The body is checked once even when the list is empty.
                emit(body, &bind("", ""), None, max_bytes)?;
                if let Some(out) = out.as_deref_mut() {
                    for (key, value) in &items {
                        emit(body, &bind(key, value), Some(out), max_bytes)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn trim_start(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(line.len());
    &line[start..]
}

/// `name` or `name.key` (a key of a map variable).
fn lookup(path: &str, vars: &Vars) -> Result<Value, String> {
    let (name, key) = match path.split_once('.') {
        Some((name, key)) => (name, Some(key)),
        None => (path, None),
    };
    let value = vars
        .get(name)
        .ok_or_else(|| format!("unknown variable {}", quote(name)))?;
    match (value, key) {
        (value, None) => Ok(value.clone()),
        (Value::Map(pairs), Some(key)) => pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| Value::Str(v.clone()))
            .ok_or_else(|| format!("{} has no key {}", quote(name), quote(key))),
        (_, Some(_)) => Err(format!("{} is not a map", quote(name))),
    }
}

/// A condition: atoms joined by `&&` or `||` (`&&` binds tighter; no parentheses). An
/// atom is `name`, `!name`, or `name OP "text"` with OP one of `==`, `!=`, and for
/// versions (`v1.25.0`) `<`, `<=`, `>`, `>=`.
fn eval(expr: &str, vars: &Vars) -> Result<bool, String> {
    let mut any = false;
    for alternative in expr.split("||") {
        let mut all = true;
        for atom in alternative.split("&&") {
            // Every atom is evaluated, so that an unknown name is an error in any position.
            all &= eval_atom(atom.trim(), vars)?;
        }
        any |= all;
    }
    Ok(any)
}

fn eval_atom(expr: &str, vars: &Vars) -> Result<bool, String> {
    if expr.is_empty() {
        return Err("empty condition".into());
    }
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        let Some((name, literal)) = expr.split_once(op) else {
            continue;
        };
        let name = name.trim();
        let literal = literal.trim();
        let literal = literal
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .ok_or_else(|| format!("expected a quoted string after {op} in {}", quote(expr)))?;
        check_path(name)?;
        let value = lookup(name, vars)?.text();
        return match op {
            "==" => Ok(value == literal),
            "!=" => Ok(value != literal),
            _ => {
                let (a, b) = match (version(&value), version(literal)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(format!("{op} compares versions (vX.Y.Z): {}", quote(expr))),
                };
                Ok(match op {
                    "<" => a < b,
                    "<=" => a <= b,
                    ">" => a > b,
                    _ => a >= b,
                })
            }
        };
    }
    let (negate, name) = match expr.strip_prefix('!') {
        Some(n) => (true, n.trim()),
        None => (false, expr),
    };
    check_path(name)?;
    Ok(lookup(name, vars)?.truthy() != negate)
}

fn version(text: &str) -> Option<semver::Version> {
    semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!("bad variable name {}", quote(name)))
    }
}

/// `name` or `name.key`; keys may also hold `-` (flag names).
fn check_path(path: &str) -> Result<(), String> {
    match path.split_once('.') {
        None => check_name(path),
        Some((name, key)) => {
            check_name(name)?;
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if key_ok {
                Ok(())
            } else {
                Err(format!("bad key {}", quote(key)))
            }
        }
    }
}

/// `@{ path | filter | ... }`: the value, through the escaping filters; an error as soon
/// as the line would pass `room` bytes (what is left of `max_bytes`).
fn substitute(line: &[u8], vars: &Vars, room: usize, max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(line.len().min(room));
    let mut rest = line;
    let fits = |out: &Vec<u8>, more: usize| {
        if out.len().saturating_add(more) > room {
            Err(too_big(max_bytes))
        } else {
            Ok(())
        }
    };
    while let Some(pos) = rest.windows(2).position(|w| w == b"@{") {
        fits(&out, pos)?;
        out.extend_from_slice(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .iter()
            .position(|b| *b == b'}')
            .ok_or_else(|| "unterminated @{".to_string())?;
        let inner = std::str::from_utf8(&after[..end])
            .map_err(|_| "variable name is not UTF-8".to_string())?;
        let mut parts = inner.split('|');
        let path = parts.next().unwrap_or_default().trim();
        check_path(path)?;
        let mut text = lookup(path, vars)?.text();
        for filter in parts {
            text = apply_filter(filter.trim(), &text)?;
        }
        fits(&out, text.len())?;
        out.extend_from_slice(text.as_bytes());
        rest = &after[end + 1..];
    }
    fits(&out, rest.len())?;
    out.extend_from_slice(rest);
    Ok(out)
}

/// The escaping filters: each makes `text` one literal of the target language, whatever it
/// holds.
fn apply_filter(filter: &str, text: &str) -> Result<String, String> {
    match filter {
        // A YAML double-quoted scalar, a TOML basic string and a JSON string share the
        // escapes used here.
        "yaml" | "toml" | "json" => {
            let mut quoted = String::with_capacity(text.len() + 2);
            quoted.push('"');
            for c in text.chars() {
                match c {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    '\n' => quoted.push_str("\\n"),
                    '\t' => quoted.push_str("\\t"),
                    '\r' => quoted.push_str("\\r"),
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        quoted.push_str(&format!("\\u{:04x}", c as u32))
                    }
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            Ok(quoted)
        }
        "sh" => Ok(format!("'{}'", text.replace('\'', "'\\''"))),
        "csv" => Ok(text.lines().collect::<Vec<_>>().join(",")),
        other => Err(format!(
            "unknown filter {}: expected yaml, toml, json, sh or csv",
            quote(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.insert("k8s_version".into(), Value::Str("v1.23.4".into()));
        v.insert("cri".into(), Value::Str("docker".into()));
        v.insert("empty".into(), Value::Str(String::new()));
        v.insert("on".into(), Value::Bool(true));
        v.insert(
            "images".into(),
            Value::List(vec!["a:1".into(), "b:2".into()]),
        );
        v.insert(
            "args".into(),
            Value::Map(vec![
                ("max-pods".into(), "200".into()),
                ("node-labels".into(), "a=b, \"c\"".into()),
            ]),
        );
        v
    }

    fn ok(src: &str) -> String {
        String::from_utf8(render("t.in", src.as_bytes(), &vars()).unwrap()).unwrap()
    }

    fn fails(src: &str) -> TemplateError {
        render("t.in", src.as_bytes(), &vars()).unwrap_err()
    }

    #[test]
    fn a_rendering_stops_at_its_bound() {
        // Loops in loops: 3^10 lines if rendered whole; stopped at 4 KiB.
        let mut v = vars();
        v.insert(
            "three".into(),
            Value::List(vec!["a".into(), "b".into(), "c".into()]),
        );
        let depth = 10;
        let mut src = String::new();
        for i in 0..depth {
            src.push_str(&format!("#@for x{i} in three\n"));
        }
        src.push_str("@{x0} @{cri}\n");
        for _ in 0..depth {
            src.push_str("#@end\n");
        }
        let whole = render_bounded("t.in", src.as_bytes(), &v, usize::MAX).map(|o| o.len());
        assert_eq!(
            whole.unwrap(),
            3usize.pow(depth as u32) * "a docker\n".len()
        );
        let e = render_bounded("t.in", src.as_bytes(), &v, 4096).unwrap_err();
        assert!(e.message.contains("renders to more than"), "{e}");
        // Within one line too.
        let line = "@{cri}".repeat(10_000);
        let e = render_bounded("t.in", line.as_bytes(), &v, 4096).unwrap_err();
        assert!(e.message.contains("renders to more than"), "{e}");
        assert_eq!(
            render_bounded("t.in", b"@{cri}\n", &v, 7).unwrap(),
            b"docker\n".to_vec()
        );
    }

    #[test]
    fn substitutes_and_passes_go_templates_through() {
        assert_eq!(ok("v: @{k8s_version}\n"), "v: v1.23.4\n");
        assert_eq!(
            ok("r: {{or .RegistryURL \"sea.hub:5000\"}} @{ cri }\n"),
            "r: {{or .RegistryURL \"sea.hub:5000\"}} docker\n"
        );
        assert_eq!(ok("@{images}\n"), "a:1\nb:2\n");
        assert_eq!(ok("no newline @{on}"), "no newline true");
        assert_eq!(ok("mail@example {x}\n"), "mail@example {x}\n");
    }

    #[test]
    fn conditionals_nest_and_directive_lines_vanish() {
        let src = "a\n#@if cri == \"docker\"\nd\n  #@if empty\nx\n  #@else\ny\n  #@end\n#@else\nc\n#@end\n#@if !on\nz\n#@end\n";
        assert_eq!(ok(src), "a\nd\ny\n");
        assert_eq!(ok("#@if cri != \"docker\"\nx\n#@end\n"), "");
        assert_eq!(ok("#@if images\nl\n#@end\n"), "l\n");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            fails("ok\n@{nope}\n"),
            TemplateError {
                file: "t.in".into(),
                line: 2,
                message: "unknown variable \"nope\"".into()
            }
        );
        assert_eq!(fails("#@if on\n").line, 1);
        assert!(fails("#@if on\n#@end\n#@end\n")
            .message
            .contains("without #@if"));
        assert!(fails("#@else\n").message.contains("without #@if"));
        assert!(fails("x @{k8s_version\n").message.contains("unterminated"));
        assert!(fails("#@loop x\n").message.contains("unknown directive"));
        assert!(fails("#@if cri == docker\n#@end\n")
            .message
            .contains("quoted"));
        // Unknown variables are caught in branches that are not emitted too.
        assert_eq!(fails("#@if !on\n@{nope}\n#@end\n").line, 2);
    }

    #[test]
    fn elif_chains_take_the_first_true_arm() {
        let src = "#@if cri == \"containerd\"\nc\n#@elif k8s_version >= \"v1.23.0\"\nnew\n#@elif on\non\n#@else\nold\n#@end\n";
        assert_eq!(ok(src), "new\n");
        assert_eq!(
            ok("#@if k8s_version < \"v1.23.0\"\nx\n#@elif empty\ny\n#@else\nz\n#@end\n"),
            "z\n"
        );
        assert_eq!(ok("#@if on && cri == \"docker\"\nboth\n#@end\n"), "both\n");
        assert_eq!(ok("#@if empty || !on\nx\n#@end\n"), "");
        assert!(fails("#@if cri < \"x\"\n#@end\n")
            .message
            .contains("versions"));
        assert!(fails("#@if on\n#@else\n#@elif on\n#@end\n")
            .message
            .contains("after #@else"));
        assert!(fails("#@elif on\n").message.contains("without #@if"));
        // an unknown name in a later atom or arm is still an error
        assert_eq!(fails("#@if on\n#@elif nope\n#@end\n").line, 2);
        assert_eq!(fails("#@if on || nope\n#@end\n").line, 1);
    }

    #[test]
    fn loops_over_lists_and_maps() {
        assert_eq!(ok("#@for i in images\n- @{i}\n#@end\n"), "- a:1\n- b:2\n");
        assert_eq!(
            ok("#@for k, v in args\n@{k}: @{v|yaml}\n#@end\n"),
            "max-pods: \"200\"\nnode-labels: \"a=b, \\\"c\\\"\"\n"
        );
        assert_eq!(ok("x: @{args.max-pods}\n"), "x: 200\n");
        assert!(fails("#@for i in args\n#@end\n").message.contains("map"));
        assert!(fails("#@for i in images\n@{nope}\n#@end\n").line == 2);
        assert!(fails("#@for i in images\n").message.contains("not closed"));
        assert!(fails("@{args.nope}\n").message.contains("no key"));
    }

    #[test]
    fn filters_make_one_literal() {
        let mut v = vars();
        v.insert("odd".into(), Value::Str("it's \"x\"\\\n\u{1}".into()));
        let r = |src: &str| String::from_utf8(render("t", src.as_bytes(), &v).unwrap()).unwrap();
        assert_eq!(r("@{odd|sh}"), "'it'\\''s \"x\"\\\n\u{1}'");
        assert_eq!(r("@{odd|yaml}"), "\"it's \\\"x\\\"\\\\\\n\\u0001\"");
        let yaml: String = serde_yaml::from_str(&r("@{odd|yaml}")).unwrap();
        assert_eq!(yaml, "it's \"x\"\\\n\u{1}");
        assert_eq!(r("@{images|csv}"), "a:1,b:2");
        assert!(render("t", b"@{odd|nope}", &v)
            .unwrap_err()
            .message
            .contains("unknown filter"));
    }
}
