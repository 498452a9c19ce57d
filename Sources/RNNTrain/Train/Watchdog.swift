import Foundation
import RNNDistributed
#if canImport(Glibc)
import Glibc
#endif

/// A communicator that times every collective: if one has not completed after `timeout` seconds
/// (a rank died, hangs, or never joined), the process prints which collective at which step it
/// was waiting in and exits; the MPI launcher then ends the other ranks. Without it a lost rank
/// can leave the others blocked forever.
public final class WatchedCommunicator: Communicator {
    let inner: Communicator
    let timeout: Double
    /// The communicator this one was split from: its step is the one reported.
    private weak var parent: WatchedCommunicator?
    /// The training step, for the message.
    public var step: Int {
        get { parent?.step ?? ownStep }
        set { ownStep = newValue }
    }
    private var ownStep = 0
    private let lock = NSLock()
    private var waitingFor: String?
    private var deadline = 0.0
    private var thread: Thread?

    public init(_ inner: Communicator, timeout: Double) {
        self.inner = inner
        self.timeout = timeout
        if timeout > 0 && inner.size > 1 {
            let t = Thread { [weak self] in self?.monitor() }
            t.name = "rnn-dp watchdog"
            t.start()
            thread = t
        }
    }

    private func monitor() {
        while true {
            usleep(100_000)
            lock.lock()
            let what = waitingFor, late = waitingFor != nil && monotonicSeconds() > deadline
            lock.unlock()
            let s = step
            if late, let what {
                let msg = "rnn-dp: error (rank \(inner.rank)): step \(s): \(what) did not complete within \(timeout) s (training.timeout_seconds); another rank has probably died or hung\n"
                _ = msg.withCString { Glibc.write(2, $0, strlen($0)) }
                _exit(RNNDPError.runtimeFailure)
            }
        }
    }

    @inline(__always) private func watch<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        guard thread != nil else { return try body() }
        lock.lock()
        waitingFor = what()
        deadline = monotonicSeconds() + timeout
        lock.unlock()
        defer { lock.lock(); waitingFor = nil; lock.unlock() }
        return try body()
    }

    public var rank: Int { inner.rank }
    public var size: Int { inner.size }
    public var localSize: Int { inner.localSize }
    public var name: String { inner.name }
    public func barrier() throws { try watch("barrier") { try inner.barrier() } }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws {
        try watch("allreduce of \(b.count) floats") { try inner.allreduceSum(b) }
    }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Double>) throws {
        try watch("allreduce of \(b.count) doubles") { try inner.allreduceSum(b) }
    }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Int64>) throws {
        try watch("allreduce of \(b.count) integers") { try inner.allreduceSum(b) }
    }
    public func allreduceMax(_ b: UnsafeMutableBufferPointer<Double>) throws {
        try watch("allreduce(max)") { try inner.allreduceMax(b) }
    }
    public func broadcast(_ b: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try watch("broadcast from rank \(root)") { try inner.broadcast(b, root: root) }
    }
    public func broadcast(_ b: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {
        try watch("broadcast from rank \(root)") { try inner.broadcast(b, root: root) }
    }
    public func allgather(_ value: UInt64) throws -> [UInt64] {
        try watch("allgather") { try inner.allgather(value) }
    }
    /// A split communicator is watched too (its own monitor, the same timeout and step).
    public func split(color: Int, key: Int) throws -> Communicator {
        let w = WatchedCommunicator(try watch("comm_split") { try inner.split(color: color, key: key) }, timeout: timeout)
        w.parent = self
        return w
    }
    public func startSend(_ b: UnsafeBufferPointer<Float>, to rank: Int, tag: Int) throws -> Int { try inner.startSend(b, to: rank, tag: tag) }
    public func gather(_ send: UnsafeBufferPointer<Float>, into: UnsafeMutableBufferPointer<Float>, ranges: [Range<Int>], root: Int?) throws {
        try watch(root == nil ? "allgatherv" : "gatherv") { try inner.gather(send, into: into, ranges: ranges, root: root) }
    }
    public func startReceive(_ b: UnsafeMutableBufferPointer<Float>, from rank: Int, tag: Int) throws -> Int {
        try inner.startReceive(b, from: rank, tag: tag)
    }
    public func startAllreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws -> Int { try inner.startAllreduceSum(b) }
    public func startAllreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int { try inner.startAllreduceSumHalf(b, bfloat: bfloat) }
    public func allreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws {
        try watch("allreduce of \(b.count) 16-bit floats") { try inner.allreduceSumHalf(b, bfloat: bfloat) }
    }
    public func test(_ id: Int) throws -> Bool { try inner.test(id) }
    public func wait(_ id: Int) throws { try watch("wait for \(waitLabel)") { try inner.wait(id) } }
    /// What `wait` waits for, for the message (the pipeline names its messages).
    public var waitLabel = "a gradient bucket's allreduce"
    public func abort(code: Int32) -> Never { inner.abort(code: code) }
    public func finalize() { inner.finalize() }
}
