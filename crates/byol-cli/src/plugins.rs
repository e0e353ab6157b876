//! `byol-run plugins`.

use byol::registry::plugins;

pub fn print() {
    let mut kind = None;
    for plugin in plugins() {
        if kind != Some(plugin.kind) {
            kind = Some(plugin.kind);
            println!("\n# {:?} plugins: the [{}] table", plugin.kind, plugin.kind.table());
        }
        println!("\n{}: {}", plugin.name, plugin.description);
        println!("  [{}]", plugin.kind.table());
        for line in plugin.example.lines() {
            println!("  {line}");
        }
    }
}
