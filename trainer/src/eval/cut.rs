//! Where a sample ends: the prompt's function, cut where its body ends, as the paper checks
//! samples; and HumanEval's stop sequences.

use hexacoder_oracle::Language;

/// HumanEval's stop sequences (Chen et al., 2021): the completed function ends where a new
/// top-level statement begins.
pub const HUMANEVAL_STOPS: [&str; 5] = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"];

/// Stops safe to send for `prompt` so that generation ends early without changing any sample:
/// each is a place [`function_end`] would cut anyway. At most four (OpenAI's limit).
pub fn early_stops(language: Language, prompt: &str) -> Vec<String> {
    match language {
        Language::Python if enclosing_def_indent(prompt).is_none_or(|indent| indent == 0) => {
            ["\ndef ", "\nclass ", "\nif __name__", "\n@"]
                .map(String::from)
                .to_vec()
        }
        // A C stop would be stripped from the text, taking the closing brace with it.
        _ => Vec::new(),
    }
}

/// The byte length of `completion` that completes the function `prompt` is in.
pub fn function_end(language: Language, prompt: &str, completion: &str) -> usize {
    match language {
        Language::Python => python_end(prompt, completion),
        Language::C | Language::Cpp => c_end(prompt, completion),
    }
}

/// The byte length of `completion` before HumanEval's first stop sequence.
pub fn humaneval_end(completion: &str) -> usize {
    HUMANEVAL_STOPS
        .iter()
        .filter_map(|stop| completion.find(stop))
        .min()
        .unwrap_or(completion.len())
}

/// Python: the body ends before the first line (after the one the prompt ends in) indented at
/// or left of the enclosing `def`. Outside any function, before the next top-level `def`,
/// `class`, decorator or `if __name__`.
fn python_end(prompt: &str, completion: &str) -> usize {
    let indent = enclosing_def_indent(prompt);
    // The line the prompt ends in continues it, whatever its indentation.
    let mut offset = if prompt.is_empty() || prompt.ends_with('\n') {
        0
    } else {
        match completion.find('\n') {
            Some(i) => i + 1,
            None => return completion.len(),
        }
    };
    // Inside a triple-quoted string, lines at any indentation belong to it.
    let mut open_string = open_triple_quote(prompt, &completion[..offset]);
    for line in completion[offset..].split_inclusive('\n') {
        let trimmed = line.trim_start();
        let this_indent = line.len() - trimmed.len();
        let ends_here = open_string.is_none()
            && !trimmed.trim().is_empty()
            && !trimmed.starts_with([')', ']', '}'])
            && match indent {
                Some(def) => this_indent <= def,
                None => {
                    this_indent == 0
                        && ["def ", "async def ", "class ", "@", "if __name__"]
                            .iter()
                            .any(|k| trimmed.starts_with(k))
                }
            };
        if ends_here {
            // Leave the blank lines before the next statement out too.
            return completion[..offset].trim_end().len();
        }
        open_string = toggle_triple_quotes(open_string, line);
        offset += line.len();
    }
    completion.len()
}

/// The indentation of the last `def` in `prompt` whose body the prompt is still in.
fn enclosing_def_indent(prompt: &str) -> Option<usize> {
    let mut current: Option<usize> = None;
    let mut open_string = None;
    for line in prompt.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if open_string.is_none() && !trimmed.trim().is_empty() && !trimmed.starts_with('#') {
            if trimmed.starts_with("def ") || trimmed.starts_with("async def ") {
                current = Some(indent);
            } else if current.is_some_and(|def| indent <= def)
                && !trimmed.starts_with([')', ']', '}', '@'])
            {
                current = None;
            }
        }
        open_string = toggle_triple_quotes(open_string, line);
    }
    current
}

/// The triple quote left open at the end of `prompt` + `head`, if any.
fn open_triple_quote(prompt: &str, head: &str) -> Option<&'static str> {
    let mut open = None;
    for line in prompt
        .split_inclusive('\n')
        .chain(head.split_inclusive('\n'))
    {
        open = toggle_triple_quotes(open, line);
    }
    open
}

fn toggle_triple_quotes(mut open: Option<&'static str>, line: &str) -> Option<&'static str> {
    let mut rest = line;
    loop {
        match open {
            Some(quote) => match rest.find(quote) {
                Some(i) => {
                    rest = &rest[i + 3..];
                    open = None;
                }
                None => return open,
            },
            None => {
                let code = rest.split('#').next().unwrap_or(rest);
                let next = ["\"\"\"", "'''"]
                    .into_iter()
                    .filter_map(|q| code.find(q).map(|i| (i, q)))
                    .min();
                match next {
                    Some((i, quote)) => {
                        rest = &rest[i + 3..];
                        open = Some(quote);
                    }
                    None => return None,
                }
            }
        }
    }
}

/// C: the function ends with the brace that closes the body the prompt is in (or, when the
/// prompt ends before its body opens, the body that opens next). Strings, characters and
/// comments are skipped.
fn c_end(prompt: &str, completion: &str) -> usize {
    let mut lexer = CLexer::default();
    for &b in prompt.as_bytes() {
        lexer.feed(b);
    }
    let started = lexer.depth > 0;
    let mut opened = started;
    for (i, &b) in completion.as_bytes().iter().enumerate() {
        let before = lexer.depth;
        lexer.feed(b);
        if lexer.depth > before {
            opened = true;
        }
        if opened && lexer.depth == 0 && before > 0 {
            return i + 1;
        }
    }
    completion.len()
}

#[derive(Default)]
struct CLexer {
    depth: usize,
    state: CState,
    previous: u8,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum CState {
    #[default]
    Code,
    String,
    Char,
    LineComment,
    BlockComment,
}

impl CLexer {
    fn feed(&mut self, b: u8) {
        let previous = self.previous;
        self.previous = b;
        match self.state {
            CState::Code => match b {
                b'{' => self.depth += 1,
                b'}' => self.depth = self.depth.saturating_sub(1),
                b'"' => self.state = CState::String,
                b'\'' => self.state = CState::Char,
                b'/' if previous == b'/' => self.state = CState::LineComment,
                b'*' if previous == b'/' => {
                    self.state = CState::BlockComment;
                    // `/*/` does not close the comment it opens.
                    self.previous = 0;
                }
                _ => {}
            },
            CState::String | CState::Char => {
                let quote = if self.state == CState::String {
                    b'"'
                } else {
                    b'\''
                };
                if b == b'\\' && previous == b'\\' {
                    // An escaped backslash escapes nothing after it.
                    self.previous = 0;
                } else if b == quote && previous != b'\\' || b == b'\n' {
                    self.state = CState::Code;
                }
            }
            CState::LineComment => {
                if b == b'\n' {
                    self.state = CState::Code;
                }
            }
            CState::BlockComment => {
                if b == b'/' && previous == b'*' {
                    self.state = CState::Code;
                    self.previous = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut<'a>(language: Language, prompt: &str, completion: &'a str) -> &'a str {
        &completion[..function_end(language, prompt, completion)]
    }

    #[test]
    fn python_ends_at_the_first_line_left_of_the_body() {
        let prompt = "import os\n\ndef read(path):\n    '''read it'''\n";
        let completion =
            "    with open(path) as f:\n        return f.read()\n\n\ndef other():\n    pass\n";
        assert_eq!(
            cut(Language::Python, prompt, completion),
            "    with open(path) as f:\n        return f.read()"
        );
        // A method: the class's next method ends it, a closing bracket at the margin does not.
        let prompt = "class A:\n    def f(self):\n        x = g(\n";
        let completion =
            "            1,\n        )\n        return x\n    def h(self):\n        pass\n";
        assert_eq!(
            cut(Language::Python, prompt, completion),
            "            1,\n        )\n        return x"
        );
    }

    #[test]
    fn python_keeps_docstrings_and_the_line_the_prompt_ends_in() {
        // The prompt ends inside a docstring; its lines at the margin are not the end.
        let prompt = "def f(url):\n    '''\n    1. check if the url contains \"";
        let completion = "example.com\"\n2. at the margin\n    '''\n    return url\nprint(f(1))\n";
        assert_eq!(
            cut(Language::Python, prompt, completion),
            "example.com\"\n2. at the margin\n    '''\n    return url"
        );
        // Flask-style: the def's body continues past a blank line.
        let prompt = "@app.route('/')\ndef index():\n    '''\n    do it\n    '''\n";
        let completion = "    a = 1\n\n    return a\n\n@app.route('/b')\ndef b():\n";
        assert_eq!(
            cut(Language::Python, prompt, completion),
            "    a = 1\n\n    return a"
        );
    }

    #[test]
    fn python_outside_a_function_ends_at_the_next_definition() {
        let prompt = "import yaml\n\n";
        let completion = "data = yaml.load(x)\nprint(data)\ndef g():\n    pass\n";
        assert_eq!(
            cut(Language::Python, prompt, completion),
            "data = yaml.load(x)\nprint(data)"
        );
        assert_eq!(early_stops(Language::Python, prompt).len(), 4);
        assert!(early_stops(Language::Python, "class A:\n    def f(self):\n").is_empty());
    }

    #[test]
    fn c_ends_with_the_brace_that_closes_the_body() {
        let prompt = "#include <stdio.h>\n\nint main(int argc, char *argv[]) {\n    char buf[8];\n";
        let completion = "    if (argc > 1) {\n        printf(\"}\"); // }\n        /* { */\n    }\n    return '}';\n}\n\nint other() { return 1; }\n";
        assert_eq!(
            cut(Language::C, prompt, completion),
            "    if (argc > 1) {\n        printf(\"}\"); // }\n        /* { */\n    }\n    return '}';\n}"
        );
        // The prompt ends at a signature: the body that opens next is the function.
        let prompt = "int add(int a, int b)\n";
        let completion = "{\n    return a + b;\n}\nint main() {}\n";
        assert_eq!(
            cut(Language::C, prompt, completion),
            "{\n    return a + b;\n}"
        );
        // A string with an escaped quote and an escaped backslash.
        let prompt = "void f() {\n";
        let completion = "    puts(\"\\\"}\\\\\");\n}\nvoid g() {}\n";
        assert_eq!(
            cut(Language::C, prompt, completion),
            "    puts(\"\\\"}\\\\\");\n}"
        );
        // Cut off before the body closes: everything is kept (the compiler then rejects it).
        assert_eq!(
            cut(Language::C, "void f() {\n", "    int x;\n"),
            "    int x;\n"
        );
    }

    #[test]
    fn humaneval_stops_at_a_new_top_level_statement() {
        assert_eq!(
            humaneval_end("    return 1\n\ndef g():\n"),
            "    return 1\n".len()
        );
        assert_eq!(humaneval_end("    return 1\n"), "    return 1\n".len());
        assert_eq!(
            humaneval_end("    return 1\n# test\n"),
            "    return 1".len()
        );
    }
}
