//! Every form `#[disallowed_until]` accepts compiles, and each is gated at run time.
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use layout_core::{
    disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

#[derive(Debug)]
pub struct OmError(#[allow(dead_code)] LayoutError);

impl From<LayoutError> for OmError {
    fn from(error: LayoutError) -> Self {
        OmError(error)
    }
}

pub type OmResult<T> = Result<T, OmError>;

pub struct Om {
    lvm: LayoutVersionManager<OmFeature>,
}

impl LayoutAware<OmFeature> for Om {
    fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
        &self.lvm
    }
}

impl Om {
    /// Documented: the gate adds a line to the docs.
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn by_ref(&self) -> OmResult<u32> {
        #![allow(clippy::unnecessary_wraps)]
        Ok(1)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn by_mut_ref(&mut self) -> OmResult<u32> {
        Ok(2)
    }

    #[disallowed_until(OmFeature::MultiTenancy, operation = "ByValue")]
    pub fn by_value(self) -> Result<Self, OmError> {
        Ok(self)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn by_mut_value(mut self) -> Result<Self, OmError> {
        self.lvm.metadata_layout_version();
        Ok(self)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn typed_self(self: Self) -> Result<Self, OmError> {
        Ok(self)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn boxed(self: Box<Self>) -> OmResult<Box<Self>> {
        Ok(self)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn shared(self: Arc<Self>) -> OmResult<u32> {
        Ok(3)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn shared_ref(self: &Arc<Self>) -> OmResult<u32> {
        Ok(4)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn counted(self: Rc<Self>) -> OmResult<u32> {
        Ok(5)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn pinned(self: Pin<&mut Self>) -> OmResult<u32> {
        Ok(6)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub async fn later(&self, n: u32) -> OmResult<u32> {
        Ok(std::future::ready(n).await)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn generic<T: Clone, const N: usize>(&self, items: [T; N]) -> OmResult<Vec<T>> {
        Ok(items.to_vec())
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn borrowed<'a>(&self, name: &'a str) -> Result<&'a str, LayoutError> {
        Ok(name)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn opaque(&self) -> OmResult<impl Iterator<Item = u32>> {
        Ok(0..3)
    }

    #[disallowed_until(OmFeature::MultiTenancy, manager = om.lvm)]
    pub fn associated(om: &Om) -> OmResult<u32> {
        Ok(om.lvm.metadata_layout_version())
    }

    #[disallowed_until(OmFeature::MultiTenancy, manager = self.lvm)]
    pub fn explicit_on_method(&self) -> OmResult<u32> {
        Ok(7)
    }
}

pub trait Tenants: LayoutAware<OmFeature> {
    fn create(&self) -> OmResult<u32>;

    #[disallowed_until(OmFeature::MultiTenancy)]
    fn defaulted(&self) -> OmResult<u32> {
        Ok(8)
    }
}

impl Tenants for Om {
    #[disallowed_until(OmFeature::MultiTenancy)]
    fn create(&self) -> OmResult<u32> {
        Ok(9)
    }
}

#[disallowed_until(OmFeature::MultiTenancy, manager = lvm)]
pub fn free(lvm: &LayoutVersionManager<OmFeature>) -> Result<u32, LayoutError> {
    Ok(10)
}

#[disallowed_until(OmFeature::MultiTenancy, manager = &*om)]
pub fn through_component(om: Arc<Om>) -> OmResult<u32> {
    Ok(11)
}

#[disallowed_until(OmFeature::MultiTenancy, manager = om.clone())]
pub unsafe fn unsafe_fn(om: Arc<Om>) -> OmResult<u32> {
    Ok(12)
}

/// A second catalog: a component aware of two managers; the feature picks the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum ScmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Erasure-coded containers")]
    ErasureCoding,
}

pub struct Both {
    om: LayoutVersionManager<OmFeature>,
    scm: LayoutVersionManager<ScmFeature>,
}

impl LayoutAware<OmFeature> for Both {
    fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
        &self.om
    }
}

impl LayoutAware<ScmFeature> for Both {
    fn layout_manager(&self) -> &LayoutVersionManager<ScmFeature> {
        &self.scm
    }
}

impl Both {
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn tenants(&self) -> Result<u32, LayoutError> {
        Ok(1)
    }

    #[disallowed_until(ScmFeature::ErasureCoding)]
    pub fn erasure_coded(&self) -> Result<u32, LayoutError> {
        Ok(2)
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("pending"),
    }
}

fn om() -> Om {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    Om {
        lvm: LayoutVersionManager::open(MemoryStorage::new(), opts).unwrap(),
    }
}

fn main() {
    let mut om = om();
    assert!(om.by_ref().is_err());
    assert!(om.by_mut_ref().is_err());
    assert!(block_on(om.later(1)).is_err());
    assert!(om.generic([1, 2]).is_err());
    assert!(om.borrowed("x").is_err());
    assert!(om.opaque().is_err());
    assert!(Om::associated(&om).is_err());
    assert!(om.explicit_on_method().is_err());
    assert!(om.create().is_err());
    assert!(om.defaulted().is_err());
    assert!(free(&om.lvm).is_err());
    assert!(Pin::new(&mut om).pinned().is_err());
    let om = Arc::new(om);
    assert!(om.shared_ref().is_err());
    assert!(Arc::clone(&om).shared().is_err());
    assert!(through_component(Arc::clone(&om)).is_err());
    assert!(unsafe { unsafe_fn(Arc::clone(&om)) }.is_err());
    let om = Arc::into_inner(om).unwrap();
    assert!(Rc::new(om.clone_like()).counted().is_err());
    assert!(Box::new(om.clone_like()).boxed().is_err());
    assert!(om.clone_like().typed_self().is_err());
    assert!(om.clone_like().by_mut_value().is_err());
    assert!(om.clone_like().by_value().is_err());

    let opts = || ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let both = Both {
        om: LayoutVersionManager::open(MemoryStorage::new(), opts()).unwrap(),
        scm: LayoutVersionManager::open(MemoryStorage::new(), opts()).unwrap(),
    };
    both.scm.finalize_step(ScmFeature::ErasureCoding).unwrap();
    assert!(both.tenants().is_err());
    assert_eq!(both.erasure_coded().unwrap(), 2);

    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(om.by_ref().unwrap(), 1);
    assert_eq!(block_on(om.later(5)).unwrap(), 5);
    assert_eq!(om.generic([1, 2]).unwrap(), [1, 2]);
    assert_eq!(om.opaque().unwrap().sum::<u32>(), 3);
    assert_eq!(om.create().unwrap(), 9);
    assert_eq!(free(&om.lvm).unwrap(), 10);
    assert!(om.by_value().is_ok());
}

impl Om {
    /// A fresh component at MLV 0 (managers are not `Clone`).
    fn clone_like(&self) -> Om {
        om()
    }
}
