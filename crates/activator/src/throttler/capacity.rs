//! How much a revision may have in flight through this activator, and which of its pods
//! this activator sends to (Knative's `calculateCapacity`, `pickIndices`, `assignSlice`,
//! HEAD's rules, §2.4). Pure functions.

/// "No limit": Knative's `MaxInt32`. For CC = 0 it means the revision's gate is open.
pub(crate) const INFINITE: usize = i32::MAX as usize;

/// The activators sharing a revision, as far as this one knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Activators {
    /// 0 while unknown.
    pub(crate) count: usize,
    /// This activator's position among them, `None` while unknown.
    pub(crate) index: Option<usize>,
}

/// The revision-wide capacity.
///
/// `backends`: healthy destinations in the last update; `assigned`: pod trackers given
/// to this activator; `pod_direct`: requests go to pods (not a ClusterIP).
pub(crate) fn capacity(
    container_concurrency: u32,
    backends: usize,
    assigned: usize,
    pod_direct: bool,
    activators: Activators,
) -> usize {
    let cc = container_concurrency as usize;
    let capacity = if pod_direct && assigned > 0 {
        cc.saturating_mul(assigned)
    } else {
        let all = cc.saturating_mul(backends);
        if all > 0 {
            (all / activators.count.max(1)).max(1)
        } else {
            0
        }
    };
    if backends > 0 && (cc == 0 || capacity > INFINITE) {
        INFINITE
    } else {
        capacity
    }
}

/// This activator's slice of `pods` sorted trackers: `[begin, end)`, and how many pods are
/// left over after equal slices (the tail, handed out one per activator).
pub(crate) fn pick_indices(pods: usize, index: usize, activators: usize) -> (usize, usize, usize) {
    if activators > pods {
        let begin = index % pods;
        return (begin, begin + 1, 0);
    }
    let slice = pods / activators;
    let begin = index * slice;
    (begin, begin + slice, pods % activators)
}

/// The trackers (sorted by destination) this activator uses: all of them when it is the
/// only one, when its place is unknown, with at most one pod, or for CC = 0; otherwise its
/// slice plus, HEAD's rule, one remnant pod of its own.
pub(crate) fn assign_slice<T: Clone>(
    sorted: &[T],
    container_concurrency: u32,
    activators: Activators,
) -> Vec<T> {
    let Some(index) = activators.index else {
        return sorted.to_vec();
    };
    if container_concurrency == 0 || sorted.len() <= 1 || activators.count <= 1 {
        return sorted.to_vec();
    }
    let (begin, end, remnants) = pick_indices(sorted.len(), index, activators.count);
    let mut assigned = sorted[begin..end].to_vec();
    if remnants > 0 && index < remnants {
        let tail = &sorted[sorted.len() - remnants..];
        assigned.push(tail[index].clone());
    }
    assigned
}
