//! How an image folder's messages name its folders and the settings that change how they are
//! read: an experiment's `[dataset]` keys, `[eval]`'s keys, or a command's own arguments, each
//! said by the message itself rather than rewritten after it.

/// What an image folder's messages call its folders and settings. The default is the
/// experiment's `[dataset]` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wording {
    pub train: SplitWording,
    pub test: SplitWording,
    /// How to read a folder's images without labels (`set labels = "none"`, `add --unlabelled`);
    /// None where nothing does.
    pub unlabelled: Option<String>,
    /// How to stop at the first unreadable image rather than skip it, and the reverse
    /// (`set dataset.on_bad_image = "error"`, `... = "skip"`); None where nothing does.
    pub on_bad_image: Option<(String, String)>,
    /// What the images are read for: `train on them`.
    pub purpose: String,
}

/// What messages call one split's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitWording {
    /// The key or argument that names the folder (`dataset.train`, `eval.test`, `--train`);
    /// empty where the folder's own path is all a message needs.
    pub key: String,
    /// The folder in a layout (`<train>` in `<train>/<class>/<image>`).
    pub placeholder: String,
    /// The key of its file list (`dataset.file_list`); empty where it has none.
    pub file_list: String,
}

impl Default for Wording {
    fn default() -> Self {
        let split = |name: &str, list: &str| SplitWording {
            key: format!("dataset.{name}"),
            placeholder: format!("<{name}>"),
            file_list: format!("dataset.{list}"),
        };
        Self {
            train: split("train", "file_list"),
            test: split("test", "test_file_list"),
            unlabelled: Some("set labels = \"none\"".into()),
            on_bad_image: Some((
                "set dataset.on_bad_image = \"error\"".into(),
                "set dataset.on_bad_image = \"skip\"".into(),
            )),
            purpose: "train on them".into(),
        }
    }
}

impl Wording {
    /// The kNN monitor's labelled folders, `[eval] train` and `test`.
    pub fn eval_keys() -> Self {
        Self::labelled(
            |split| (format!("eval.{split}"), format!("<{split}>")),
            "evaluate on them",
        )
    }

    /// Folders given as a command's `--train` and `--test`, read to `purpose` (`evaluate on them`).
    pub fn flags(purpose: &str) -> Self {
        Self::labelled(|split| (format!("--{split}"), "<folder>".into()), purpose)
    }

    /// Labelled folders without file lists, unlabelled reading or a bad-image setting, whose
    /// key and placeholder `name` gives for `train` and `test`.
    fn labelled(name: impl Fn(&str) -> (String, String), purpose: &str) -> Self {
        let split = |split: &str| {
            let (key, placeholder) = name(split);
            SplitWording {
                key,
                placeholder,
                file_list: String::new(),
            }
        };
        Self {
            train: split("train"),
            test: split("test"),
            unlabelled: None,
            on_bad_image: None,
            purpose: purpose.into(),
        }
    }

    /// A folder given as a command's only argument, whose path names it (`byol-run shard`):
    /// `unlabelled` says how that command reads it unlabelled.
    pub fn argument(unlabelled: &str) -> Self {
        let split = SplitWording {
            key: String::new(),
            placeholder: "<folder>".into(),
            file_list: String::new(),
        };
        Self {
            train: split.clone(),
            test: split,
            unlabelled: Some(unlabelled.into()),
            on_bad_image: None,
            purpose: "train on them".into(),
        }
    }

    /// `, or <how to read unlabelled> <for_what>` where something reads a folder unlabelled,
    /// else nothing.
    pub(super) fn or_unlabelled(&self, for_what: &str) -> String {
        self.unlabelled
            .as_ref()
            .map_or(String::new(), |how| format!(", or {how} {for_what}"))
    }
}

/// One split of a folder, as its messages name it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Split<'a> {
    pub wording: &'a Wording,
    pub test: bool,
}

impl<'a> Split<'a> {
    pub fn train(wording: &'a Wording) -> Self {
        Self { wording, test: false }
    }

    pub fn test(wording: &'a Wording) -> Self {
        Self { wording, test: true }
    }

    pub fn words(&self) -> &'a SplitWording {
        match self.test {
            true => &self.wording.test,
            false => &self.wording.train,
        }
    }

    /// `dataset.train: ` to start a message about the folder; nothing where its path names it.
    pub fn at(&self) -> String {
        match self.words().key.as_str() {
            "" => String::new(),
            key => format!("{key}: "),
        }
    }

    /// `<train>/<class>/<image>`.
    pub fn layout(&self) -> String {
        format!("{}/<class>/<image>", self.words().placeholder)
    }
}
