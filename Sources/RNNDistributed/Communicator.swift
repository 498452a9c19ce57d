#if canImport(Glibc)
import Glibc
#endif
// The only way the trainer talks to other ranks. The numerics (module RNN) never see this.

/// Collective operations over all ranks of a job. Every rank must call the same collectives in
/// the same order with the same counts; anything that decides control flow is derived from the
/// results of collectives, so every rank decides the same.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Ranks on this node (for choosing threads per rank).
    var localSize: Int { get }
    /// A short description of the transport, for the start-up banner.
    var name: String { get }

    func barrier() throws
    /// In-place elementwise sum over ranks.
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws
    func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// In-place broadcast from `root`.
    func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws
    func broadcast(_ buffer: UnsafeMutableBufferPointer<UInt8>, root: Int) throws
    /// In-place sum of 16-bit floats (bfloat16 when `bfloat` else IEEE half), each pairwise sum
    /// computed in float32.
    func allreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws
    /// Starts an in-place sum over ranks; the buffer must stay untouched until the returned
    /// request completes (`test` or `wait`).
    func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> Int
    /// The nonblocking twin of `allreduceSumHalf`, completed like `startAllreduceSum`.
    func startAllreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int
    /// True when request `id` has completed; drives MPI's progress.
    func test(_ id: Int) throws -> Bool
    /// Blocks until request `id` completes.
    func wait(_ id: Int) throws
    /// One value from every rank, in rank order.
    func allgather(_ value: UInt64) throws -> [UInt64]
    /// The ranks that pass the same `color` form a new communicator, ranked by `key` (MPI_Comm_split;
    /// collective over this communicator).
    func split(color: Int, key: Int) throws -> Communicator
    /// Starts sending (receiving) `buffer` to (from) `rank` of this communicator with `tag`; the
    /// buffer must stay untouched until the returned request completes (`test` or `wait`).
    func startSend(_ buffer: UnsafeBufferPointer<Float>, to rank: Int, tag: Int) throws -> Int
    func startReceive(_ buffer: UnsafeMutableBufferPointer<Float>, from rank: Int, tag: Int) throws -> Int
    /// Rank i's `send` (ranges[i].count floats) into `into[ranges[i]]`, on `root` only (nil) or on
    /// every rank (MPI_Gatherv, MPI_Allgatherv). `into` is only read on the receiving ranks.
    func gather(_ send: UnsafeBufferPointer<Float>, into: UnsafeMutableBufferPointer<Float>, ranges: [Range<Int>], root: Int?) throws
    /// Ends every rank of the job with `code`. For errors that other ranks cannot know about.
    func abort(code: Int32) -> Never
    /// Orderly shutdown; call once at the end.
    func finalize()
}

public struct CommunicatorError: Error, CustomStringConvertible {
    public let operation: String
    public let message: String
    public init(operation: String, message: String) {
        self.operation = operation
        self.message = message
    }
    public var description: String { "MPI \(operation) failed: \(message)" }
}

extension Communicator {
    /// Communicators that only record or fake collectives (tests) have no sub-communicators or
    /// messages.
    public func split(color: Int, key: Int) throws -> Communicator {
        throw CommunicatorError(operation: "comm_split", message: "not supported by \(name)")
    }
    public func startSend(_ buffer: UnsafeBufferPointer<Float>, to rank: Int, tag: Int) throws -> Int {
        throw CommunicatorError(operation: "isend", message: "not supported by \(name)")
    }
    public func startReceive(_ buffer: UnsafeMutableBufferPointer<Float>, from rank: Int, tag: Int) throws -> Int {
        throw CommunicatorError(operation: "irecv", message: "not supported by \(name)")
    }
    public func gather(_ send: UnsafeBufferPointer<Float>, into: UnsafeMutableBufferPointer<Float>, ranges: [Range<Int>], root: Int?) throws {
        guard size == 1 else { throw CommunicatorError(operation: "gatherv", message: "not supported by \(name)") }
        UnsafeMutableBufferPointer(rebasing: into[ranges[0]]).update(fromContentsOf: send)
    }

    public func allreduceSum(_ values: inout [Double]) throws {
        try values.withUnsafeMutableBufferPointer { try allreduceSum($0) }
    }
    public func allreduceSum(_ values: inout [Int64]) throws {
        try values.withUnsafeMutableBufferPointer { try allreduceSum($0) }
    }
    /// In-place elementwise mean over ranks: the sum, then times 1 / size (the same bits on every rank).
    public func allreduceMean(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try allreduceSum(buffer)
        let inverse = 1 / Float(size)
        for i in buffer.indices { buffer[i] *= inverse }
    }
    public func allreduceMax(_ values: inout [Double]) throws {
        try values.withUnsafeMutableBufferPointer { try allreduceMax($0) }
    }

    /// Rows [rank*B/size, (rank+1)*B/size) of a global batch of B rows: the data-parallel split.
    /// Shards differ in size by at most one; their union in rank order is 0..<B.
    public func shard(of globalBatch: Int) -> Range<Int> {
        Shard.rows(globalBatch: globalBatch, rank: rank, size: size)
    }
}

public enum Shard {
    public static func rows(globalBatch: Int, rank: Int, size: Int) -> Range<Int> {
        (rank * globalBatch / size)..<((rank + 1) * globalBatch / size)
    }
}

/// A job of one rank: every collective is the identity. Used when rnn-dp runs without mpirun.
public final class SingleProcessCommunicator: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var localSize: Int { 1 }
    public var name: String { "single process (no MPI)" }
    public func barrier() throws {}
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws {}
    public func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {}
    public func allgather(_ value: UInt64) throws -> [UInt64] { [value] }
    public func split(color: Int, key: Int) throws -> Communicator { self }
    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> Int { 0 }
    public func startAllreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int { 0 }
    public func allreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws {}
    public func test(_ id: Int) throws -> Bool { true }
    public func wait(_ id: Int) throws {}
    public func abort(code: Int32) -> Never { exit(code) }
    public func finalize() {}
}
