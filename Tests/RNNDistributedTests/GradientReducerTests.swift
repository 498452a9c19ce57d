import XCTest
@testable import RNNDistributed

/// A communicator of `size` ranks seen from one of them, in which every other rank holds the same
/// values, so a sum is `size` times the local value. It records every call in order, and a
/// started allreduce completes only after `testsToComplete` calls of `test` on it (or a `wait`),
/// so several requests are outstanding at once as they are over a real network.
final class RecordingCommunicator: Communicator {
    enum Call: Equatable { case start(Range<Int>), startHalf(Range<Int>), test(Int, done: Bool), wait(Int), blocking(Int), blockingHalf(Int) }
    let size: Int
    var rank: Int { 0 }
    var localSize: Int { 1 }
    var name: String { "recording" }
    let base: UnsafeMutablePointer<Float>
    /// The compressed hook's scratch buffer (16-bit requests are recorded as ranges of it).
    var halfBase: UnsafeMutablePointer<UInt16>?
    let testsToComplete: Int
    private(set) var calls: [Call] = []
    /// Each started request: what completing it does to its buffer, its tests so far, and whether done.
    private var requests: [(sum: () -> Void, tests: Int, done: Bool)] = []
    private(set) var mostOutstanding = 0

    init(size: Int, base: UnsafeMutablePointer<Float>, testsToComplete: Int) {
        self.size = size
        self.base = base
        self.testsToComplete = testsToComplete
    }

    var outstanding: Int { requests.filter { !$0.done }.count }

    private func complete(_ id: Int) {
        guard !requests[id].done else { return }
        requests[id].sum()
        requests[id].done = true
    }

    /// The sum of `size` equal bf16 values, rounded to bf16 (exact for the small integers used here).
    static func sumBF16(_ b: UnsafeMutableBufferPointer<UInt16>, size: Int) {
        for i in b.indices { b[i] = Compression.toBF16(Compression.fromBF16(b[i]) * Float(size)) }
    }

    func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> Int {
        let lo = buffer.baseAddress! - base
        calls.append(.start(lo..<(lo + buffer.count)))
        let n = Float(size)
        requests.append(({ for i in buffer.indices { buffer[i] *= n } }, 0, false))
        mostOutstanding = max(mostOutstanding, outstanding)
        return requests.count - 1
    }
    func startAllreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int {
        XCTAssertTrue(bfloat)
        let lo = buffer.baseAddress! - halfBase!
        calls.append(.startHalf(lo..<(lo + buffer.count)))
        let n = size
        requests.append(({ RecordingCommunicator.sumBF16(buffer, size: n) }, 0, false))
        mostOutstanding = max(mostOutstanding, outstanding)
        return requests.count - 1
    }
    func test(_ id: Int) throws -> Bool {
        requests[id].tests += 1
        if requests[id].tests >= testsToComplete { complete(id) }
        calls.append(.test(id, done: requests[id].done))
        return requests[id].done
    }
    func wait(_ id: Int) throws { calls.append(.wait(id)); complete(id) }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        calls.append(.blocking(buffer.count))
        for i in buffer.indices { buffer[i] *= Float(size) }
    }
    func allreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws {
        calls.append(.blockingHalf(buffer.count))
        RecordingCommunicator.sumBF16(buffer, size: size)
    }

    func barrier() throws {}
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws { XCTFail("unexpected") }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws { XCTFail("unexpected") }
    func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws { XCTFail("unexpected") }
    func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
    func broadcast(_ buffer: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {}
    func allgather(_ value: UInt64) throws -> [UInt64] { [UInt64](repeating: value, count: size) }
    func abort(code: Int32) -> Never { fatalError("abort \(code)") }
    func finalize() {}
}

final class GradientReducerTests: XCTestCase {
    /// A buffer of `count` floats 1, 2, 3, ... and a bucketed reducer over it (float32 sums, or
    /// `compression` as the buckets' hook).
    func make(count: Int, bucketFloats: Int, size: Int = 3, testsToComplete: Int = 3, compression: Compression = .none)
        -> (UnsafeMutableBufferPointer<Float>, RecordingCommunicator, BucketedReducer) {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
        for i in 0..<count { buffer[i] = Float(i + 1) }
        let comm = RecordingCommunicator(size: size, base: buffer.baseAddress!, testsToComplete: testsToComplete)
        let hook: BucketHook = compression == .none ? SumHook(comm: comm, buffer: buffer.baseAddress!)
            : CompressedHook(comm: comm, buffer: buffer, compression: compression)
        comm.halfBase = (hook as? CompressedHook)?.scratch.baseAddress
        return (buffer, comm, BucketedReducer(comm: comm, buffer: buffer, bucketBytes: bucketFloats * 4, hook: hook))
    }

    var starts: (RecordingCommunicator) -> [Range<Int>] {
        { $0.calls.compactMap { if case .start(let r) = $0 { return r } else { return nil } } }
    }

    /// Buckets are cut from the end of the buffer (where gradients become final first), cover it
    /// exactly once, and `ready(from:)` starts only buckets that lie wholly in the final part,
    /// in that fixed order; several are outstanding while the backward pass goes on; `finish`
    /// completes every one, and every element is reduced exactly once.
    func testSevenBucketsStartInOrderAsTheirGradientsBecomeFinal() throws {
        let (buffer, comm, exchange) = make(count: 65, bucketFloats: 10)
        defer { buffer.deallocate() }
        XCTAssertEqual(exchange.buckets, [55..<65, 45..<55, 35..<45, 25..<35, 15..<25, 5..<15, 0..<5])
        exchange.begin()
        try exchange.ready(from: 60)  // the head's part of the last bucket only: nothing starts
        XCTAssertEqual(starts(comm), [])
        try exchange.ready(from: 44)  // buckets [55, 65) and [45, 55) are final; [35, 45) is not
        XCTAssertEqual(starts(comm), [55..<65, 45..<55])
        try exchange.progress()
        try exchange.ready(from: 20)
        XCTAssertEqual(starts(comm), [55..<65, 45..<55, 35..<45, 25..<35])
        XCTAssertGreaterThanOrEqual(comm.mostOutstanding, 3, "requests overlap: \(comm.calls)")
        XCTAssertEqual(Array(buffer[0..<25]), (1...25).map(Float.init), "no element outside a started bucket is touched")
        try exchange.finish()
        XCTAssertEqual(starts(comm), exchange.buckets, "every bucket started once, from the end")
        XCTAssertEqual(comm.outstanding, 0)
        XCTAssertEqual(Array(buffer), (1...65).map { Float($0 * 3) }, "each element summed exactly once")
        // A second step starts over with the same buckets in the same order.
        let before = comm.calls.count
        exchange.begin()
        try exchange.finish()
        XCTAssertEqual(Array(starts(comm)[7...]), exchange.buckets)
        XCTAssertEqual(comm.calls.count - before, 7 + 7 + comm.calls[before...].filter { if case .test = $0 { return true } else { return false } }.count)
    }

    /// Never more than `maxOutstanding` requests at once: the oldest is waited for first, the
    /// same on every rank since the decision depends on counts only.
    func testOutstandingRequestsAreBoundedOldestFirst() throws {
        let n = BucketedReducer.maxOutstanding + 40
        let (buffer, comm, exchange) = make(count: n, bucketFloats: 1, testsToComplete: .max)
        defer { buffer.deallocate() }
        exchange.begin()
        try exchange.ready(from: 0)
        XCTAssertEqual(comm.mostOutstanding, BucketedReducer.maxOutstanding)
        let waits = comm.calls.compactMap { if case .wait(let id) = $0 { return id } else { return nil } }
        XCTAssertEqual(waits, Array(0..<40), "the oldest requests were completed first")
        try exchange.finish()
        XCTAssertEqual(comm.outstanding, 0)
        XCTAssertEqual(Array(buffer), (1...n).map { Float($0 * 3) })
    }

    /// A bucket larger than the buffer is one bucket; a zero-size request still cuts buckets of
    /// one element (never an empty or endless cut).
    func testBucketCutsAtTheEdges() {
        let (a, _, one) = make(count: 9, bucketFloats: 100)
        defer { a.deallocate() }
        XCTAssertEqual(one.buckets, [0..<9])
        let (b, _, tiny) = make(count: 3, bucketFloats: 0)
        defer { b.deallocate() }
        XCTAssertEqual(tiny.buckets, [2..<3, 1..<2, 0..<1])
    }

    /// bf16 as a hook on the buckets: each bucket is encoded (divided by the rank count), reduced
    /// as 16-bit floats and decoded into the buffer when its request completes, in the same
    /// bucket order, with several in flight; never one blocking call.
    func testCompressedBucketsOverlapLikeFloat32Ones() throws {
        let (buffer, comm, reducer) = make(count: 65, bucketFloats: 10, size: 4, compression: .bf16)
        defer { buffer.deallocate() }
        reducer.begin()
        try reducer.ready(from: 44)
        try reducer.progress()
        try reducer.ready(from: 20)
        XCTAssertGreaterThanOrEqual(comm.mostOutstanding, 3, "requests overlap: \(comm.calls)")
        XCTAssertEqual(Array(buffer[0..<25]), (1...25).map(Float.init), "no element outside a started bucket is touched")
        try reducer.finish()
        let halves = comm.calls.compactMap { if case .startHalf(let r) = $0 { return r } else { return nil } }
        XCTAssertEqual(halves, reducer.buckets, "every bucket started once as bf16, from the end")
        XCTAssertFalse(comm.calls.contains { if case .start = $0 { return true }; if case .blockingHalf = $0 { return true }; return false })
        XCTAssertEqual(comm.outstanding, 0)
        // Small integers over 4 ranks are exact in bf16: x / 4 summed 4 times, times 4.
        XCTAssertEqual(Array(buffer), (1...65).map { Float($0 * 4) })
        XCTAssertTrue(reducer.summary.contains("7 buckets") && reducer.summary.contains("as bf16"), reducer.summary)
    }

    /// The blocking reducer does nothing during the backward pass and one allreduce in finish;
    /// the factory picks buckets only with more than one rank and a bucket size.
    func testBlockingReducerAndTheChoice() throws {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 9)
        defer { buffer.deallocate() }
        for i in 0..<9 { buffer[i] = Float(i + 1) }
        let comm = RecordingCommunicator(size: 3, base: buffer.baseAddress!, testsToComplete: 1)
        let blocking = makeGradientReducer(comm: comm, buffer: buffer, bucketBytes: 0, compression: .none)
        XCTAssertTrue(blocking is BlockingReducer)
        XCTAssertFalse(blocking.overlapsBackward)
        blocking.begin()
        try blocking.ready(from: 0)
        try blocking.progress()
        XCTAssertEqual(comm.calls, [])
        try blocking.finish()
        XCTAssertEqual(comm.calls, [.blocking(9)])
        XCTAssertEqual(Array(buffer), (1...9).map { Float($0 * 3) })
        let compressed = makeGradientReducer(comm: comm, buffer: buffer, bucketBytes: 0, compression: .bf16)
        try compressed.finish()
        XCTAssertEqual(comm.calls.last, .blockingHalf(9))
        XCTAssertTrue(makeGradientReducer(comm: comm, buffer: buffer, bucketBytes: 16, compression: .none) is BucketedReducer)
        let hooked = makeGradientReducer(comm: comm, buffer: buffer, bucketBytes: 16, compression: .fp16) as? BucketedReducer
        XCTAssertTrue(hooked?.hook is CompressedHook)
        XCTAssertTrue(makeGradientReducer(comm: SingleProcessCommunicator(), buffer: buffer, bucketBytes: 16, compression: .none) is BlockingReducer)
    }
}
