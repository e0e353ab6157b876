//! `byol-run plugins`.

use std::io::Write;

use byol::registry::plugins;

/// Prints every plugin; a closed pipe (`| head`) ends the listing with an error that `main`
/// treats as a quiet exit.
pub fn print() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut kind = None;
    for plugin in plugins() {
        if kind != Some(plugin.kind) {
            kind = Some(plugin.kind);
            writeln!(
                out,
                "\n# {:?} plugins: the [{}] table",
                plugin.kind,
                plugin.kind.table()
            )?;
        }
        writeln!(out, "\n{}: {}", plugin.name, plugin.description)?;
        writeln!(out, "  [{}]", plugin.kind.table())?;
        for line in plugin.example().lines() {
            writeln!(out, "  {line}")?;
        }
    }
    out.flush()
}
