//! Writes the impl and its registration.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use super::Registration;

/// The impl, then, in an anonymous `const` block, the registration's functions and its
/// `inventory` submission:
///
/// ```text
/// impl Handler for T { .. }
/// const _: () = {
///     fn feature() -> FeatureRef { FeatureRef::of(F::X) }              // a layout feature
///     fn instance_type() -> TypeId { TypeId::of::<Box<dyn Handler>>() }
///     fn construct() -> Box<dyn Any> { Box::new(Box::new(T::default()) as Box<dyn Handler>) }
///     inventory::submit! { HandlerRegistration::new("key", feature, instance_type, construct, ..) }
/// };
/// ```
pub(super) fn registered_impl(registration: &Registration) -> TokenStream {
    let Registration {
        feature,
        key,
        item,
        trait_path,
    } = registration;
    let self_ty = &item.self_ty;
    let type_name = self_ty.to_token_stream().to_string().replace(' ', "");
    let trait_name = trait_path.to_token_stream().to_string().replace(' ', "");

    let feature_ref = quote_spanned! {feature.span()=>
        ::layout_core::__private::FeatureRef::of(#feature)
    };
    let handler = quote_spanned! {self_ty.span()=>
        ::layout_core::__private::construct_handler::<#self_ty>()
    };
    quote! {
        #item

        const _: () = {
            fn __layout_feature() -> ::layout_core::__private::FeatureRef {
                #feature_ref
            }
            fn __layout_instance_type() -> ::core::any::TypeId {
                ::core::any::TypeId::of::<::std::boxed::Box<dyn #trait_path>>()
            }
            fn __layout_construct() -> ::std::boxed::Box<dyn ::core::any::Any> {
                let handler: ::std::boxed::Box<dyn #trait_path> = ::std::boxed::Box::new(#handler);
                ::std::boxed::Box::new(handler)
            }
            ::layout_core::__private::inventory::submit! {
                ::layout_core::__private::HandlerRegistration::new(
                    #key,
                    __layout_feature,
                    __layout_instance_type,
                    __layout_construct,
                    #type_name,
                    #trait_name,
                    ::core::file!(),
                    ::core::line!(),
                )
            }
        };
    }
}
