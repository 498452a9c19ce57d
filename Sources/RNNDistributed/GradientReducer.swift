#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Seconds a step's gradient reduction took.
public struct ReductionTiming: Sendable {
    /// From each reduction's start to its observed completion, summed.
    public var communication = 0.0
    /// Waited for after the backward pass: the part the overlap did not hide.
    public var exposed = 0.0
    public init(communication: Double = 0, exposed: Double = 0) {
        self.communication = communication
        self.exposed = exposed
    }
}

/// How every rank's gradient buffer becomes the sum of all ranks' gradients: the one place where
/// gradients are reduced (docs/ARCHITECTURE.md, "Where is X"). The backward pass drives it, as it
/// drives PyTorch DDP's Reducer (prepare_for_backward, mark_bucket_ready, finalize_backward):
///
///     begin()             before the step's last backward pass
///     ready(from: offset) gradients [offset, end) are final (Network.onGradientsFinal)
///     progress()          between time steps (Network.onProgress): outstanding reductions advance
///     finish()            after the backward pass; on return the buffer holds the sum
///
/// Every rank makes the same calls with the same offsets, so every rank starts the same
/// reductions in the same order. `make` chooses the implementation from the config.
public protocol GradientReducer: AnyObject {
    /// One line for the start-up banner.
    var summary: String { get }
    /// Whether ready/progress act (the training step installs the network's hooks only then).
    var overlapsBackward: Bool { get }
    func begin()
    func ready(from offset: Int) throws
    func progress() throws
    @discardableResult func finish() throws -> ReductionTiming
}

/// The reducer for a gradient buffer: buckets started during the backward pass when there is
/// more than one rank and `bucketBytes` > 0, else one blocking allreduce after it. Compression
/// (bf16, fp16) is a hook on the buckets, or the blocking allreduce's encoding.
public func makeGradientReducer(comm: Communicator, buffer: UnsafeMutableBufferPointer<Float>, bucketBytes: Int,
                                compression: Compression) -> GradientReducer {
    guard bucketBytes > 0 && comm.size > 1 else { return BlockingReducer(comm: comm, buffer: buffer, compression: compression) }
    let hook: BucketHook = compression == .none ? SumHook(comm: comm, buffer: buffer.baseAddress!)
        : CompressedHook(comm: comm, buffer: buffer, compression: compression)
    return BucketedReducer(comm: comm, buffer: buffer, bucketBytes: bucketBytes, hook: hook)
}

/// The whole buffer in one blocking allreduce after the backward pass.
public final class BlockingReducer: GradientReducer {
    let comm: Communicator
    let buffer: UnsafeMutableBufferPointer<Float>
    let compression: Compression
    var scratch: [UInt16]

    public init(comm: Communicator, buffer: UnsafeMutableBufferPointer<Float>, compression: Compression = .none) {
        self.comm = comm
        self.buffer = buffer
        self.compression = compression
        scratch = [UInt16](repeating: 0, count: compression == .none ? 0 : buffer.count)
    }

    public var summary: String {
        compression == .none ? "one allreduce after the backward pass"
            : "gradients as \(compression.rawValue), one allreduce after the backward pass"
    }
    public var overlapsBackward: Bool { false }
    public func begin() {}
    public func ready(from offset: Int) throws {}
    public func progress() throws {}

    @discardableResult public func finish() throws -> ReductionTiming {
        let t0 = monotonicClock()
        try scratch.withUnsafeMutableBufferPointer { try compression.allreduce(buffer, scratch: $0, comm: comm) }  // .none: allreduceSum
        let t = monotonicClock() - t0
        return ReductionTiming(communication: t, exposed: t)
    }
}

/// What the bucketed reducer does with one bucket (PyTorch DDP's communication hook): start its
/// nonblocking reduction, and once that completed, leave the bucket's sum in the buffer.
public protocol BucketHook: AnyObject {
    func start(_ bucket: Range<Int>) throws -> Int
    func completed(_ bucket: Range<Int>)
}

/// The float32 sum, in place.
public final class SumHook: BucketHook {
    let comm: Communicator
    let buffer: UnsafeMutablePointer<Float>
    public init(comm: Communicator, buffer: UnsafeMutablePointer<Float>) {
        self.comm = comm
        self.buffer = buffer
    }
    public func start(_ b: Range<Int>) throws -> Int {
        try comm.startAllreduceSum(UnsafeMutableBufferPointer(start: buffer + b.lowerBound, count: b.count))
    }
    public func completed(_ b: Range<Int>) {}
}

/// The sum through 16-bit floats: the bucket is encoded into its part of a scratch buffer when it
/// starts and decoded back when it completes (`Compression` says how), so compressed gradients
/// overlap the backward pass as float32 ones do.
public final class CompressedHook: BucketHook {
    let comm: Communicator
    let buffer: UnsafeMutableBufferPointer<Float>
    let compression: Compression
    let scratch: UnsafeMutableBufferPointer<UInt16>  // (P), one slot per gradient element

    public init(comm: Communicator, buffer: UnsafeMutableBufferPointer<Float>, compression: Compression) {
        precondition(compression != .none)
        self.comm = comm
        self.buffer = buffer
        self.compression = compression
        scratch = .allocate(capacity: buffer.count)
        scratch.initialize(repeating: 0)
    }
    deinit { scratch.deallocate() }

    public func start(_ b: Range<Int>) throws -> Int {
        compression.encode(buffer, b, into: scratch, ranks: comm.size)
        return try comm.startAllreduceSumHalf(UnsafeMutableBufferPointer(rebasing: scratch[b]), bfloat: compression == .bf16)
    }
    public func completed(_ b: Range<Int>) {
        compression.decode(scratch, b, into: buffer, ranks: comm.size)
    }
}

/// The flat gradient buffer cut into buckets of about `bucketBytes`, each reduced by its hook as
/// soon as its gradients are final, so that communication overlaps the rest of the backward pass.
///
/// Gradients become final from the end of the buffer backwards (the head, then the top layer,
/// ...), so buckets are cut from the end. Every rank cuts the same buckets and starts them in the
/// same order; at most `maxOutstanding` are in flight (the oldest is completed first).
public final class BucketedReducer: GradientReducer {
    let hook: BucketHook
    /// Buckets as ranges of the buffer, in the order they are started (from the end).
    public let buckets: [Range<Int>]
    private var next = 0  // index of the next bucket to start
    static let maxOutstanding = 128  // below CMPI_MAX_REQUESTS
    let comm: Communicator
    private var pending: [(id: Int, bucket: Int, started: Double)] = []
    private var timing = ReductionTiming()
    let bucketBytes: Int

    public init(comm: Communicator, buffer: UnsafeMutableBufferPointer<Float>, bucketBytes: Int, hook: BucketHook) {
        self.comm = comm
        self.hook = hook
        self.bucketBytes = bucketBytes
        let per = max(1, bucketBytes / MemoryLayout<Float>.stride)
        var cuts: [Range<Int>] = []
        var hi = buffer.count
        while hi > 0 {
            let lo = max(0, hi - per)
            cuts.append(lo..<hi)
            hi = lo
        }
        buckets = cuts
        pending.reserveCapacity(BucketedReducer.maxOutstanding)
    }

    public var summary: String {
        let mib = String(format: "%.3g", Double(bucketBytes) / 1_048_576)
        let kind = (hook as? CompressedHook).map { " as \($0.compression.rawValue)" } ?? ""
        return "\(buckets.count) bucket\(buckets.count == 1 ? "" : "s") of up to \(mib) MiB\(kind), started during the backward pass"
    }
    public var overlapsBackward: Bool { true }

    public func begin() {
        next = 0
        pending.removeAll(keepingCapacity: true)
        timing = ReductionTiming()
    }

    private func complete(_ p: (id: Int, bucket: Int, started: Double)) {
        hook.completed(buckets[p.bucket])
        timing.communication += monotonicClock() - p.started
    }

    /// Gradients at [offset, end) are final: start every bucket that lies wholly inside.
    public func ready(from offset: Int) throws {
        while next < buckets.count && buckets[next].lowerBound >= offset {
            // The shim holds a bounded number of requests: complete the oldest first when full,
            // the same on every rank (the decision depends on counts only).
            if pending.count >= BucketedReducer.maxOutstanding {
                let oldest = pending.removeFirst()
                try comm.wait(oldest.id)
                complete(oldest)
            }
            let id = try hook.start(buckets[next])
            pending.append((id, next, monotonicClock()))
            next += 1
        }
        try progress()
    }

    /// Lets MPI advance outstanding reductions; completes those that are done.
    public func progress() throws {
        var kept = 0
        for i in pending.indices {
            let p = pending[i]
            if try comm.test(p.id) { complete(p) } else { pending[kept] = p; kept += 1 }
        }
        pending.removeLast(pending.count - kept)
    }

    /// Starts what is left and waits for everything.
    @discardableResult public func finish() throws -> ReductionTiming {
        try ready(from: 0)
        let t0 = monotonicClock()
        for p in pending {
            try comm.wait(p.id)
            complete(p)
        }
        pending.removeAll(keepingCapacity: true)
        timing.exposed = monotonicClock() - t0
        return timing
    }
}

/// Seconds on the monotonic clock.
@inline(__always) func monotonicClock() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
