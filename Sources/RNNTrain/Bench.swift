import Foundation
import RNN
import RNNDistributed

/// `rnn-dp bench`: the standard configurations (character model, V = 65, softmax cross-entropy at
/// every step, Adam), timed step by step with the same numerics and exchange as training.
public enum Bench {
    public struct Case: Sendable {
        public let name: String
        public let cell: CellKind
        public let hidden: Int
        public let layers: Int
        public let steps: Int  // T
        public let batch: Int  // B (global for strong scaling, per rank for weak)
        public init(name: String, cell: CellKind, hidden: Int, layers: Int, steps: Int, batch: Int) {
            (self.name, self.cell, self.hidden, self.layers, self.steps, self.batch) = (name, cell, hidden, layers, steps, batch)
        }
    }

    /// The table (BENCHMARKS.md).
    public static let standard: [Case] = [
        Case(name: "rnn-h128", cell: .rnn, hidden: 128, layers: 1, steps: 64, batch: 32),
        Case(name: "lstm-h256x2", cell: .lstm, hidden: 256, layers: 2, steps: 64, batch: 32),
        Case(name: "gru-h512", cell: .gru, hidden: 512, layers: 1, steps: 64, batch: 64),
        Case(name: "lstm-h1024", cell: .lstm, hidden: 1024, layers: 1, steps: 32, batch: 64),
    ]
    /// Cases run only when named (--case): the model of docs/PARALLELISM.md's comparison of data
    /// and pipeline parallelism.
    public static let extra: [Case] = [
        Case(name: "lstm-h512x4", cell: .lstm, hidden: 512, layers: 4, steps: 64, batch: 32),
    ]
    public static var all: [Case] { standard + extra }
    public static let vocabulary = 65

    public struct Result: Sendable {
        public var name: String
        public var ranks: Int
        public var globalBatch: Int
        public var medianStep: Double
        public var tokensPerSecond: Double
        public var gflops: Double
        public var fractionOfSgemm: Double
        public var medianCompute: Double
        public var medianExposedComm: Double
        /// Total communication time per step: from each bucket's start to its completion, summed
        /// (equal to the exposed time when the exchange is one blocking allreduce).
        public var medianCommunication: Double
        public var parameters: Int
        /// Bytes the model's own buffers need: parameters, gradients, Adam's two moments, and the
        /// activations and workspaces of the network; and the growth of this process's peak
        /// resident memory over the case (from before the network was made to after its steps).
        public var modelBytes: Int
        public var peakGrowthBytes: Int
        /// Reproducible mode: the number of micro-shards (the exchange then sums int64).
        public var microShards: Int?
        /// Bytes each rank contributes to the allreduce per step (the flat float32 gradient, or
        /// int64 in reproducible mode).
        public var bytesPerStep: Int { parameters * (microShards != nil ? 8 : compression != .none ? 2 : 4) }
        public var compression: Compression = .none
        /// Pipeline stages (1: none) and the chunks of a sweep.
        public var stages = 1, chunks = 1
        /// Per step, the most any rank sent point-to-point (bytes, messages), its gradient
        /// elements allreduced, and the collectives it joined.
        public var p2pBytes = 0, p2pMessages = 0, allreducedElements = 0, collectives = 0
        /// Fraction of the step the stages wait for their neighbours (mean over ranks of the time
        /// blocked in receives over the step time), and the model's (S-1)/(C+S-1).
        public var bubble = 0.0
        public var modelBubble: Double { Double(stages - 1) / Double(chunks + stages - 1) }
        /// The idle fraction the cost model expects with this split's imbalance (PipelineLayout.modelledIdle).
        public var modelIdle = 0.0
        /// Achieved allreduce algorithm bandwidth: bytes per step over total communication time.
        public var allreduceGBps: Double { ranks > 1 && medianCommunication > 0 ? Double(bytesPerStep) / medianCommunication / 1e9 : 0 }
    }

    /// Matrix-product FLOPs of one training step (forward + backward) of the whole global batch.
    public static func flops(_ c: Case, globalBatch B: Int) -> Double {
        let G = Double(c.cell.gates), H = Double(c.hidden), TB = Double(c.steps * B), V = Double(vocabulary)
        let T = Double(c.steps), Bd = Double(B)
        var f = 0.0
        for k in 0..<c.layers {
            // forward h W_hh^T and dW_hh skip step 0 (its h_{-1} is zero); backward dh does all T steps
            let recurrent = 2 * Bd * H * G * H * (3 * T - 2)
            let input = k == 0 ? 0 : 2 * TB * H * G * H * 3  // token input is a gather: no product
            f += recurrent + input
        }
        f += 2 * TB * H * V * 3  // head forward, dW, dh
        return f
    }

    /// Single-thread sgemm rate (GFLOP/s) on square matrices of size n: the machine's yardstick.
    public static func sgemmRate(n: Int = 1024, repeats: Int = 5) -> Double {
        let a = Buffer<Float>(count: n * n), b = Buffer<Float>(count: n * n), c = Buffer<Float>(count: n * n)
        for i in 0..<(n * n) { a[i] = Float(i % 7) * 0.1; b[i] = Float(i % 5) * 0.1 }
        let saved = blasThreads()
        setBLASThreads(1)
        defer { setBLASThreads(saved) }
        var times: [Double] = []
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            Float.gemm(transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a.pointer, lda: n, b: b.pointer, ldb: n, beta: 0, c: c.pointer, ldc: n)
            times.append(monotonicSeconds() - t0)
        }
        return 2 * Double(n * n * n) / median(times) / 1e9
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }

    /// Runs one case: `warmup` untimed steps, then `steps` timed ones. Every rank computes its
    /// shard; the exchange is the training exchange (allreduce of the flat gradient).
    public static func run(_ c: Case, comm: Communicator, strong: Bool, warmup: Int, steps: Int, sgemm: Double,
                           bucketBytes: Int = 4 << 20, microShards: Int? = nil, localSGD: Int? = nil,
                           compression: Compression = .none, stages S: Int = 1, chunkSteps: Int = 0) throws -> Result {
        guard comm.size % S == 0, S <= c.layers else {
            throw RNNDPError("bench \(c.name): --pipeline \(S) needs a rank count it divides (\(comm.size)) and at most \(c.layers) layers", collective: true)
        }
        let D = comm.size / S  // replicas
        let B = strong ? c.batch : c.batch * D
        guard B >= D else { throw RNNDPError("bench \(c.name): global batch \(B) is smaller than \(D) replicas", collective: true) }
        if let M = microShards, !(D...B).contains(M) {
            throw RNNDPError("bench \(c.name): --micro-shards \(M) must be between the \(D) replicas and the global batch \(B)", collective: true)
        }
        let spec = ModelSpec(cell: c.cell, activation: .tanh, input: .tokens(vocabulary: vocabulary), hiddenSize: c.hidden,
                             layers: c.layers, outputSize: vocabulary, output: .everyStep, loss: .crossEntropy)
        let residentBefore = Memory.residentBytes()
        let T = c.steps
        // A pipeline as training makes it (Trainer.setUpPipeline): stage r % S of replica r / S.
        var stepComm = comm, pipe: (PipelineLayout, Communicator, PipeMessages)?, stageLayers: Range<Int>?
        if S > 1 {
            let (layout, stageComm, pipeComm, m) = try PipelineLayout.join(comm, layers: PipelineLayout.balanced(spec, stages: S, steps: T),
                                                                           console: Console(rank: comm.rank, size: comm.size))
            (stepComm, pipe, stageLayers) = (stageComm, (layout, pipeComm, m), layout.layers[layout.stage])
        }
        let net = Network<Float>(spec: spec, stageLayers: stageLayers)
        net.initializeParameters(seed: 1)
        net.chunkSteps = chunkSteps
        net.pipe = pipe?.2.ends
        let opt = Adam<Float>(count: net.gradients.count)

        // The training step itself (GradientStep, chosen as training chooses it), over fixed
        // random rows: data loading is not what is measured.
        let passes = BackwardPasses(network: net, source: RandomRows(vocabulary: vocabulary, steps: T), accumulate: 1, steps: T, bpttLength: 0, seed: 1)
        let mode: SynchronizationMode = microShards.map { .reproducible(microShards: $0) }
            ?? localSGD.map { .localSGD(period: $0) } ?? .dataParallel(bucketBytes: bucketBytes, compression: compression)
        var gradientStep = makeGradientStep(mode, network: net, comm: stepComm, passes: passes, globalBatch: B, fault: nil)
        if let (layout, pipeComm, m) = pipe {
            gradientStep = PipelineStep(inner: gradientStep, pipe: pipeComm, network: net, messages: m, layout: layout)
        }
        var stepTimes: [Double] = [], computeTimes: [Double] = [], commTimes: [Double] = [], totalCommTimes: [Double] = []
        var waits: [Double] = []
        for i in 0..<(warmup + steps) {
            try comm.barrier()
            let t0 = monotonicSeconds()
            net.gradients.zero()
            let g = try gradientStep.gradients(step: 1, diagnostics: false)  // step 1's rows every time
            let t1 = monotonicSeconds()
            opt.step(parameters: net.parameters, gradients: net.gradients, learningRate: 1e-3)
            let averaging = try gradientStep.updated(step: i + 1)  // local SGD: every k steps
            let t2 = monotonicSeconds()
            if i >= warmup {
                stepTimes.append(t2 - t0)
                computeTimes.append(g.compute + (t2 - t1 - averaging))
                commTimes.append(t1 - t0 - g.compute + averaging)
                totalCommTimes.append(max(g.reduction.communication, t1 - t0 - g.compute) + averaging)
                if let m = pipe?.2 { waits.append(m.receiveSeconds / (t2 - t0)) }
            }
        }
        // Rank 0 reports the slowest rank's times (a step is as slow as its slowest rank).
        // Local SGD: means, so that the averaging every k steps is amortized over the steps.
        let center: ([Double]) -> Double = localSGD == nil ? median : { $0.reduce(0, +) / Double(max($0.count, 1)) }
        // Reproducible mode keeps the gradients of this rank's micro-shards but the last.
        let ownMicroShards = microShards.map { Shard.rows(globalBatch: $0, rank: stepComm.rank, size: stepComm.size).count } ?? 1
        var med = [center(stepTimes), center(computeTimes), center(commTimes), center(totalCommTimes),
                   Double(pipe?.2.bytesSent ?? 0), Double(pipe?.2.messagesSent ?? 0)]
        try comm.allreduceMax(&med)
        var bubble = [waits.isEmpty ? 0 : center(waits) / Double(comm.size)]
        try comm.allreduceSum(&bubble)
        let f = flops(c, globalBatch: B)
        let perRankGflops = f / Double(comm.size) / med[0] / 1e9
        // This rank's buffers: its stage's parameters, gradient and Adam's two moments, kept
        // micro-shard gradients, and the network's workspaces.
        let stage = net.gradients.count
        var r = Result(name: c.name, ranks: comm.size, globalBatch: B, medianStep: med[0],
                       tokensPerSecond: Double(B * T) / med[0], gflops: f / med[0] / 1e9,
                       fractionOfSgemm: perRankGflops / sgemm, medianCompute: med[1], medianExposedComm: med[2],
                       medianCommunication: med[3], parameters: net.layout.count,
                       modelBytes: 4 * (4 * stage + net.workspaceScalars + max(ownMicroShards - 1, 0) * stage),
                       peakGrowthBytes: max(0, Memory.peakResidentBytes() - residentBefore), microShards: microShards,
                       compression: compression)
        r.stages = S
        r.chunks = Network<Float>.chunks(steps: T, chunkSteps: chunkSteps)
        r.p2pBytes = Int(med[4])
        r.p2pMessages = Int(med[5])
        var largest = [Double(stage)]
        try comm.allreduceMax(&largest)
        r.allreducedElements = D > 1 ? Int(largest[0]) : 0
        // The gradient (one blocking allreduce, or its buckets), the loss sums, and a pipeline's
        // sums over its stages.
        let buckets = D == 1 ? 0 : bucketBytes > 0 && microShards == nil ? (4 * Int(largest[0]) + bucketBytes - 1) / bucketBytes : (microShards != nil ? 2 : 1)
        r.collectives = buckets + (D > 1 ? 1 : 0) + (S > 1 ? 1 : 0)
        r.bubble = bubble[0]
        if let (layout, _, _) = pipe { r.modelIdle = PipelineLayout.modelledIdle(spec, layers: layout.layers, steps: T, chunks: r.chunks) }
        return r
    }
}

/// `rnn-dp bench`'s rows: global row b is a fixed random sequence of tokens and targets, a
/// function of b only, the same on every step.
final class RandomRows: BatchSource {
    let vocabulary: Int, steps: Int
    private var cache: [Int: Batch] = [:]  // by the first row of a request
    init(vocabulary: Int, steps: Int) {
        self.vocabulary = vocabulary
        self.steps = steps
    }

    func fill(_ batch: inout Batch, step: Int, rows: Range<Int>, state: inout [Float]) -> Bool {
        if let b = cache[rows.lowerBound], b.batchSize == rows.count { batch = b; return false }
        let T = steps
        var tokens = [Int32](repeating: 0, count: T * rows.count), targets = tokens
        for (i, row) in rows.enumerated() {
            var rng = Xoshiro256(seed: 7, stream: RandomStream.trainingData.rawValue, index: UInt64(row))
            for t in 0..<T {
                tokens[t * rows.count + i] = Int32(rng.nextInt(below: vocabulary))
                targets[t * rows.count + i] = Int32(rng.nextInt(below: vocabulary))
            }
        }
        batch = Batch(batchSize: rows.count, steps: T, tokens: tokens, targetClasses: targets)
        cache[rows.lowerBound] = batch
        return false
    }
}

/// Resident memory of this process (Linux: /proc/self/statm and getrusage).
public enum Memory {
    /// Resident bytes now.
    public static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The largest resident size this process has had (ru_maxrss, in KiB on Linux).
    public static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }
}
