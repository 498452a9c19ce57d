import CMPI
#if canImport(Glibc)
import Glibc
#endif

/// MPI_COMM_WORLD (or a communicator split from it) through the C shim. Errors come back as
/// codes (MPI_ERRORS_RETURN) and are thrown.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localSize: Int
    /// The shim's handle of the MPI communicator (0: MPI_COMM_WORLD).
    let handle: Int32

    /// Initializes MPI. Call at most once per process.
    public init() throws {
        let rc = cmpi_init()
        if rc != 0 { throw CommunicatorError(operation: "init", message: MPICommunicator.message(rc)) }
        handle = 0
        rank = Int(cmpi_rank(0))
        size = Int(cmpi_size(0))
        localSize = Int(cmpi_local_size())
    }

    private init(handle: Int32, localSize: Int) {
        self.handle = handle
        rank = Int(cmpi_rank(handle))
        size = Int(cmpi_size(handle))
        self.localSize = localSize
    }

    public var name: String { "MPI (Open MPI), \(size) rank\(size == 1 ? "" : "s"), \(localSize) on this node" }

    public func split(color: Int, key: Int) throws -> Communicator {
        var h: Int32 = -1
        try check(cmpi_comm_split(handle, Int32(color), Int32(key), &h), "comm_split")
        return MPICommunicator(handle: h, localSize: localSize)
    }
    public func startSend(_ b: UnsafeBufferPointer<Float>, to rank: Int, tag: Int) throws -> Int {
        var id: Int32 = -1
        try check(cmpi_isend_f32(handle, b.baseAddress, Int64(b.count), Int32(rank), Int32(tag), &id), "isend to rank \(rank)")
        return Int(id)
    }
    public func startReceive(_ b: UnsafeMutableBufferPointer<Float>, from rank: Int, tag: Int) throws -> Int {
        var id: Int32 = -1
        try check(cmpi_irecv_f32(handle, b.baseAddress, Int64(b.count), Int32(rank), Int32(tag), &id), "irecv from rank \(rank)")
        return Int(id)
    }

    static func message(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: 512)
        cmpi_error_string(code, &buf, 512)
        return String(cString: buf)
    }

    @inline(__always) private func check(_ rc: Int32, _ op: String) throws {
        if rc != 0 { throw CommunicatorError(operation: op, message: MPICommunicator.message(rc)) }
    }

    public func gather(_ send: UnsafeBufferPointer<Float>, into: UnsafeMutableBufferPointer<Float>, ranges: [Range<Int>], root: Int?) throws {
        precondition(ranges.count == size && ranges[rank].count == send.count && ranges.allSatisfy { $0.upperBound <= Int(Int32.max) })
        let counts = ranges.map { Int32($0.count) }, displs = ranges.map { Int32($0.lowerBound) }
        if let root {
            try check(cmpi_gatherv_f32(handle, send.baseAddress, Int32(send.count), into.baseAddress, counts, displs, Int32(root)), "gatherv")
        } else {
            try check(cmpi_allgatherv_f32(handle, send.baseAddress, Int32(send.count), into.baseAddress, counts, displs), "allgatherv")
        }
    }
    public func barrier() throws { try check(cmpi_barrier(handle), "barrier") }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws {
        try check(cmpi_allreduce_sum_f32(handle, b.baseAddress, Int64(b.count)), "allreduce(sum, float)")
    }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Double>) throws {
        try check(cmpi_allreduce_sum_f64(handle, b.baseAddress, Int64(b.count)), "allreduce(sum, double)")
    }
    public func allreduceSum(_ b: UnsafeMutableBufferPointer<Int64>) throws {
        try check(cmpi_allreduce_sum_i64(handle, b.baseAddress, Int64(b.count)), "allreduce(sum, int64)")
    }
    public func allreduceMax(_ b: UnsafeMutableBufferPointer<Double>) throws {
        try check(cmpi_allreduce_max_f64(handle, b.baseAddress, Int64(b.count)), "allreduce(max, double)")
    }
    public func broadcast(_ b: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try check(cmpi_bcast_f32(handle, b.baseAddress, Int64(b.count), Int32(root)), "broadcast(float)")
    }
    public func broadcast(_ b: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {
        try check(cmpi_bcast_bytes(handle, b.baseAddress, Int64(b.count), Int32(root)), "broadcast(bytes)")
    }
    public func allgather(_ value: UInt64) throws -> [UInt64] {
        var out = [UInt64](repeating: 0, count: size)
        try check(cmpi_allgather_u64(handle, value, &out), "allgather")
        return out
    }
    public func allreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws {
        try check(cmpi_allreduce_sum_half(handle, b.baseAddress, Int64(b.count), bfloat ? 0 : 1), "allreduce(sum, \(bfloat ? "bf16" : "fp16"))")
    }
    public func startAllreduceSum(_ b: UnsafeMutableBufferPointer<Float>) throws -> Int {
        var id: Int32 = -1
        try check(cmpi_iallreduce_sum_f32(handle, b.baseAddress, Int64(b.count), &id), "iallreduce(sum, float)")
        return Int(id)
    }
    public func startAllreduceSumHalf(_ b: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws -> Int {
        var id: Int32 = -1
        try check(cmpi_iallreduce_sum_half(handle, b.baseAddress, Int64(b.count), bfloat ? 0 : 1, &id), "iallreduce(sum, \(bfloat ? "bf16" : "fp16"))")
        return Int(id)
    }
    public func test(_ id: Int) throws -> Bool {
        var done: Int32 = 0
        try check(cmpi_test(Int32(id), &done), "test")
        return done != 0
    }
    public func wait(_ id: Int) throws { try check(cmpi_wait(Int32(id)), "wait") }
    public func abort(code: Int32) -> Never {
        cmpi_abort(code)
        exit(code)
    }
    public func finalize() { if cmpi_is_initialized() != 0 { _ = cmpi_finalize() } }
}

/// How this process was started: under an MPI launcher (mpirun, srun --mpi=pmix, ...) or alone.
public enum Launch {
    /// Environment variables that MPI launchers set for each rank.
    static let markers = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"]

    /// The number of ranks an MPI launcher (or srun) says it started, if any.
    static var launcherSize: Int? {
        for key in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] {
            if let v = getenv(key).flatMap({ Int(String(cString: $0)) }) { return v }
        }
        if getenv("SLURM_STEP_ID") != nil, let n = getenv("SLURM_NTASKS").flatMap({ Int(String(cString: $0)) }) { return n }
        return nil
    }

    public static var underMPILauncher: Bool {
        markers.contains { getenv($0) != nil }
    }

    /// MPI when launched by an MPI launcher (or when RNN_DP_MPI=1 forces it), otherwise a
    /// single-process communicator that needs no MPI runtime at all.
    public static func communicator() throws -> Communicator {
        if let force = getenv("RNN_DP_MPI").map({ String(cString: $0) }) {
            if force == "0" {
                // N processes that each think they are alone would race on the same files.
                if let n = launcherSize, n > 1 {
                    throw CommunicatorError(operation: "launch", message: "RNN_DP_MPI=0 but the launcher started \(n) ranks: they would train \(n) independent models into the same files; unset RNN_DP_MPI, or start one process")
                }
                return SingleProcessCommunicator()
            }
            if force == "1" { return try MPICommunicator() }
        }
        if underMPILauncher { return try MPICommunicator() }
        // srun without an MPI plugin starts N independent processes: each would train alone and
        // all would write the same output directory.
        if let n = getenv("SLURM_NTASKS").flatMap({ Int(String(cString: $0)) }), n > 1, getenv("SLURM_STEP_ID") != nil {
            throw CommunicatorError(operation: "launch", message: "started by srun with \(n) tasks but without MPI; use srun --mpi=pmix or mpirun, or srun --ntasks=1")
        }
        return SingleProcessCommunicator()
    }
}
