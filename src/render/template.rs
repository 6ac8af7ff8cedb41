//! The build-time template language (see docs/TEMPLATES.md): `@{name}` substitutions and
//! `#@if` / `#@else` / `#@end` directive lines. Anything else, sealer's deploy-time
//! `{{ ... }}` included, passes through byte for byte.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Bool(bool),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Bool(b) => *b,
        }
    }

    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::List(l) => l.join("\n"),
            Value::Bool(b) => b.to_string(),
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

/// One open `#@if`: whether its enclosing block is emitted, whether its condition held,
/// and whether we are past its `#@else`.
struct Block {
    outer_active: bool,
    condition: bool,
    in_else: bool,
}

impl Block {
    fn active(&self) -> bool {
        self.outer_active && (self.condition != self.in_else)
    }
}

/// Renders `src` (the template file `file`, for error messages) with `vars`.
/// Every line is checked, also in branches that are not emitted, so an error in a
/// rarely taken branch still refuses the mount.
pub fn render(file: &str, src: &[u8], vars: &Vars) -> Result<Vec<u8>, TemplateError> {
    let mut out = Vec::with_capacity(src.len());
    let mut stack: Vec<Block> = Vec::new();
    let mut line_no = 0;
    let err = |line: usize, message: String| TemplateError {
        file: file.to_string(),
        line,
        message,
    };
    for line in src.split_inclusive(|&b| b == b'\n') {
        line_no += 1;
        let active = stack.last().map(Block::active).unwrap_or(true);
        let trimmed = trim_start(line);
        if let Some(directive) = trimmed.strip_prefix(b"#@") {
            let text = std::str::from_utf8(directive)
                .map_err(|_| err(line_no, "directive is not UTF-8".into()))?
                .trim();
            let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
            match word {
                "if" => {
                    let condition = eval(rest.trim(), vars).map_err(|m| err(line_no, m))?;
                    stack.push(Block {
                        outer_active: active,
                        condition,
                        in_else: false,
                    });
                }
                "else" | "end" if !rest.trim().is_empty() => {
                    return Err(err(line_no, format!("#@{word} takes no argument")));
                }
                "else" => match stack.last_mut() {
                    Some(block) if !block.in_else => block.in_else = true,
                    Some(_) => return Err(err(line_no, "second #@else for one #@if".into())),
                    None => return Err(err(line_no, "#@else without #@if".into())),
                },
                "end" => {
                    if stack.pop().is_none() {
                        return Err(err(line_no, "#@end without #@if".into()));
                    }
                }
                other => {
                    return Err(err(
                        line_no,
                        format!("unknown directive #@{}", quote(other)),
                    ))
                }
            }
            continue;
        }
        let rendered = substitute(line, vars).map_err(|m| err(line_no, m))?;
        if active {
            out.extend_from_slice(&rendered);
        }
    }
    if !stack.is_empty() {
        return Err(err(line_no, "#@if is not closed by #@end".into()));
    }
    Ok(out)
}

fn trim_start(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(line.len());
    &line[start..]
}

fn lookup<'a>(name: &str, vars: &'a Vars) -> Result<&'a Value, String> {
    vars.get(name)
        .ok_or_else(|| format!("unknown variable {}", quote(name)))
}

/// `name`, `!name`, `name == "text"`, `name != "text"`.
fn eval(expr: &str, vars: &Vars) -> Result<bool, String> {
    if expr.is_empty() {
        return Err("#@if needs a condition".into());
    }
    for (op, equal) in [("==", true), ("!=", false)] {
        if let Some((name, literal)) = expr.split_once(op) {
            let name = name.trim();
            let literal = literal.trim();
            let literal = literal
                .strip_prefix('"')
                .and_then(|l| l.strip_suffix('"'))
                .ok_or_else(|| format!("expected a quoted string after {op} in {}", quote(expr)))?;
            check_name(name)?;
            return Ok((lookup(name, vars)?.text() == literal) == equal);
        }
    }
    let (negate, name) = match expr.strip_prefix('!') {
        Some(n) => (true, n.trim()),
        None => (false, expr),
    };
    check_name(name)?;
    Ok(lookup(name, vars)?.truthy() != negate)
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!("bad variable name {}", quote(name)))
    }
}

fn substitute(line: &[u8], vars: &Vars) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.windows(2).position(|w| w == b"@{") {
        out.extend_from_slice(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .iter()
            .position(|b| *b == b'}')
            .ok_or_else(|| "unterminated @{".to_string())?;
        let name = std::str::from_utf8(&after[..end])
            .map_err(|_| "variable name is not UTF-8".to_string())?;
        let name = name.trim();
        check_name(name)?;
        out.extend_from_slice(lookup(name, vars)?.text().as_bytes());
        rest = &after[end + 1..];
    }
    out.extend_from_slice(rest);
    Ok(out)
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
        v
    }

    fn ok(src: &str) -> String {
        String::from_utf8(render("t.in", src.as_bytes(), &vars()).unwrap()).unwrap()
    }

    fn fails(src: &str) -> TemplateError {
        render("t.in", src.as_bytes(), &vars()).unwrap_err()
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
}
