//! `#[derive(KeyDocs)]` on a plugin's configuration struct: each named field's TOML key with the
//! first sentence of its `///` doc comment, so that the examples `byol-run config --defaults` and
//! `byol-run plugins` print are commented from the same text as the code, and cannot drift. A
//! one-field tuple struct (a `#[serde(transparent)]` newtype) has its inner type's keys.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, Meta};

#[proc_macro_derive(KeyDocs)]
pub fn derive_key_docs(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    let body = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => {
                let pairs = fields.named.iter().filter_map(|field| {
                    let key = serde_name(&field.attrs).or_else(|| Some(field.ident.as_ref()?.to_string()))?;
                    let doc = first_sentence(&doc_text(&field.attrs));
                    Some(quote! { (#key, #doc) })
                });
                quote! { vec![#(#pairs),*] }
            }
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                let inner = &fields.unnamed[0].ty;
                quote! { <#inner as byol::registry::KeyDocs>::key_docs() }
            }
            _ => return error(name, "KeyDocs needs named fields or a one-field newtype"),
        },
        _ => return error(name, "KeyDocs is derived for structs only"),
    };
    quote! {
        impl #impl_generics byol::registry::KeyDocs for #name #type_generics #where_clause {
            fn key_docs() -> Vec<(&'static str, &'static str)> {
                #body
            }
        }
    }
    .into()
}

fn error(name: &syn::Ident, message: &str) -> TokenStream {
    syn::Error::new(name.span(), message).to_compile_error().into()
}

/// The `///` lines of a field, joined with spaces.
fn doc_text(attrs: &[syn::Attribute]) -> String {
    let lines = attrs.iter().filter_map(|attr| match &attr.meta {
        Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s), ..
            }) => Some(s.value().trim().to_string()),
            _ => None,
        },
        _ => None,
    });
    lines.collect::<Vec<_>>().join(" ")
}

/// The first sentence (up to a ". " before a capital, not "et al. "), rustdoc links made plain
/// code, the first letter lower-cased unless the first word is a name: one line that reads
/// like the other comments of `config --defaults`.
fn first_sentence(text: &str) -> String {
    let text = text.replace("[`", "`").replace("`]", "`");
    let ends = text.match_indices(". ").map(|(i, _)| i).find(|&i| {
        let next_is_capital = text[i + 2..].starts_with(|c: char| c.is_uppercase());
        next_is_capital && !text[..i].ends_with("et al")
    });
    let sentence = ends.map_or(text.as_str(), |i| &text[..i]).trim_end_matches('.');
    // A name keeps its case: an acronym, a word with a capital or a digit after its first letter
    // ("PyTorch's", "L2").
    let first_word = sentence.split_whitespace().next().unwrap_or_default();
    let name = first_word
        .chars()
        .skip(1)
        .any(|c| c.is_uppercase() || c.is_ascii_digit());
    let mut chars = sentence.chars();
    match chars.next() {
        Some(first) if !name => first.to_lowercase().chain(chars).collect(),
        _ => sentence.to_string(),
    }
}

/// `#[serde(rename = "...")]` on a field, the key it is read under.
fn serde_name(attrs: &[syn::Attribute]) -> Option<String> {
    let mut renamed = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                renamed = Some(meta.value()?.parse::<syn::LitStr>()?.value());
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::first_sentence;

    #[test]
    fn the_first_word_is_lower_cased_unless_it_is_a_name() {
        assert_eq!(first_sentence("Save every N steps. More here."), "save every N steps");
        for name in ["PyTorch's fused kernel", "L2 penalty", "CIFAR stem: a 3x3 convolution"] {
            assert_eq!(first_sentence(name), name);
        }
        assert_eq!(first_sentence("As in Grill et al. 2020."), "as in Grill et al. 2020");
    }
}
