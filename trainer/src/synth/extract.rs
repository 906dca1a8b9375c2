//! Code out of a chat answer: the fenced block in the right language (or untagged), else the
//! answer itself when it reads as code. A block in another language is no answer.

use hexacoder_oracle::Language;

/// Why an answer holds no usable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoCode {
    /// No fenced block and nothing that reads as code.
    Missing,
    /// Only blocks tagged with another language.
    WrongLanguage(String),
}

impl std::fmt::Display for NoCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoCode::Missing => write!(f, "the answer holds no code"),
            NoCode::WrongLanguage(tag) => {
                write!(f, "the answer's code is {tag}, not the sample's language")
            }
        }
    }
}

fn tag_matches(language: Language, tag: &str) -> Option<bool> {
    let tag = tag.trim().to_ascii_lowercase();
    let tag = tag.split_whitespace().next().unwrap_or("");
    if tag.is_empty() {
        return None;
    }
    Some(match language {
        Language::Python => matches!(tag, "python" | "py" | "python3"),
        Language::C | Language::Cpp => matches!(tag, "c" | "cpp" | "c++" | "h" | "cc"),
    })
}

/// The code in `answer` for `language`: the longest fenced block tagged with the language or
/// untagged; without fences, the answer from its first code-looking line.
pub fn extract_code(answer: &str, language: Language) -> Result<String, NoCode> {
    let mut blocks: Vec<(Option<bool>, String, String)> = Vec::new();
    let mut lines = answer.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let Some(tag) = trimmed.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        let mut closed = false;
        for inner in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        // An unclosed block (the answer ran out of tokens) still holds code.
        let _ = closed;
        blocks.push((tag_matches(language, tag), tag.trim().to_string(), body));
    }
    if !blocks.is_empty() {
        let best = blocks
            .iter()
            .filter(|(matches, _, body)| *matches != Some(false) && !body.trim().is_empty())
            .max_by_key(|(matches, _, body)| (matches.is_some(), body.len()));
        return match best {
            Some((_, _, body)) => Ok(body.clone()),
            None => match blocks.iter().find(|(m, _, _)| *m == Some(false)) {
                Some((_, tag, _)) => Err(NoCode::WrongLanguage(tag.clone())),
                None => Err(NoCode::Missing),
            },
        };
    }
    let starts_code = |line: &str| {
        let t = line.trim_start();
        match language {
            Language::Python => [
                "import ",
                "from ",
                "def ",
                "async def ",
                "class ",
                "@",
                "#!",
            ]
            .iter()
            .any(|k| t.starts_with(k)),
            Language::C | Language::Cpp => {
                t.starts_with("#include")
                    || t.starts_with("#define")
                    || t.starts_with("int ")
                    || t.starts_with("void ")
                    || t.starts_with("static ")
            }
        }
    };
    let mut offset = 0;
    for line in answer.split_inclusive('\n') {
        if starts_code(line) {
            return Ok(answer[offset..].to_string());
        }
        offset += line.len();
    }
    Err(NoCode::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_comes_out_of_real_looking_answers() {
        let fenced = "Here is the fixed code:\n\n```python\nimport os\n\ndef f(p):\n    return os.path.basename(p)\n```\n\nThis avoids path traversal by ...";
        assert_eq!(
            extract_code(fenced, Language::Python).expect("code"),
            "import os\n\ndef f(p):\n    return os.path.basename(p)\n"
        );
        // A short usage snippet before the real fix: the longest block wins.
        let two = "Use it like this:\n```\nf('x')\n```\nThe fix:\n```py\ndef f(p):\n    return safe(p)\n\ndef g():\n    pass\n```\n";
        assert_eq!(
            extract_code(two, Language::Python).expect("code"),
            "def f(p):\n    return safe(p)\n\ndef g():\n    pass\n"
        );
        // No fences: from the first line that reads as code.
        let bare = "Sure! The fixed version:\nimport subprocess\ndef run(cmd):\n    subprocess.run([cmd], shell=False)\n";
        assert_eq!(
            extract_code(bare, Language::Python).expect("code"),
            "import subprocess\ndef run(cmd):\n    subprocess.run([cmd], shell=False)\n"
        );
        // C, in a block cut off by the token limit.
        let c = "```c\n#include <stdio.h>\nint main(void) {\n    return 0;\n";
        assert!(
            extract_code(c, Language::C)
                .expect("code")
                .starts_with("#include")
        );
    }

    #[test]
    fn answers_without_code_or_in_another_language_are_refused() {
        assert_eq!(
            extract_code("I cannot help with that.", Language::Python),
            Err(NoCode::Missing)
        );
        assert_eq!(
            extract_code("```java\nclass A {}\n```", Language::Python),
            Err(NoCode::WrongLanguage("java".into()))
        );
        assert_eq!(
            extract_code("```python\n\n```", Language::Python),
            Err(NoCode::Missing)
        );
    }
}
