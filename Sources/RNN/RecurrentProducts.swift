// The per-step recurrent products (issue 17): forward Z_t (B, G*H) += h_{t-1} (B, H) W_hh^T and
// backward dL/dh_{t-1} (B, H) += dU_t (B, G*H) W_hh, T of each per layer with the same W_hh.
// OpenBLAS repacks W_hh inside every one of those calls; our kernel (Sources/CRecurrent) packs it
// once per forward pass and reuses the packed copy for all T forward and T backward products.
// BENCHMARKS.md, "Recurrent products: which library", has the measurements behind the choice.
// RNN_DP_PRODUCTS=bf16 (only when asked for: it changes the numerics) runs the same products with
// W_hh and the activations rounded to bf16 and fp32 accumulation (AVX512_BF16's vdpbf16ps); the
// master weights, every other product (W_ih, the head, dW after the sweep) and the optimizer stay
// fp32. BENCHMARKS.md, "bf16 recurrent products", has its speed and its accuracy cost.

import CRecurrent
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which kernel the Float recurrent products use: RNN_DP_PRODUCTS=auto|openblas|packed|libxsmm|bf16
/// (RNN_DP_LIBXSMM: where libxsmm.so is, when not on the library path).
public enum RecurrentProducts {
    /// A kernel on the packed W_hh (crecurrent.h): our kernel's levels, or libxsmm's JIT kernels.
    public enum Level: Int32, CaseIterable, Sendable {
        /// avx512bf16: bf16 products with fp32 accumulation (crecurrent.h), not the fma chain of the others.
        case scalar = 0, avx2 = 1, avx512 = 2, libxsmm = 3, avx512bf16 = 4
        public var name: String {
            switch self {
            case .scalar: return "scalar"
            case .avx2: return "AVX2+FMA"
            case .avx512: return "AVX-512"
            case .libxsmm: return "libxsmm"
            case .avx512bf16: return "AVX512_BF16"
            }
        }
        /// True when this CPU runs the level (libxsmm: when it loaded).
        public var isSupported: Bool {
            if self == .libxsmm { _ = RecurrentProducts.libxsmm }
            return crec_supports(rawValue) != 0
        }
        /// The best level of our kernel this CPU runs.
        public static var best: Level { Level(rawValue: crec_best_level())! }
    }

    public enum Path: Equatable, Sendable {
        case openblas
        case packed(Level)
    }

    /// libxsmm loaded with dlopen, once: from RNN_DP_LIBXSMM (a path) or libxsmm.so / libxsmm.so.1
    /// on the library path. `loaded` false: `info` says why (Debian's libxsmm-dev is a static
    /// library only, so a stock Debian machine has none to load).
    public static let libxsmm: (loaded: Bool, info: String) = {
        let path = getenv("RNN_DP_LIBXSMM")
        let ok = path.map { crec_libxsmm_load($0) } ?? crec_libxsmm_load(nil)
        return (ok != 0, String(cString: crec_libxsmm_info()))
    }()

    public struct ChoiceError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The environment variable that chooses the path.
    public static let variable = "RNN_DP_PRODUCTS"

    /// The path a value of RNN_DP_PRODUCTS names (nil or empty: auto). auto: libxsmm where it
    /// loads and the CPU has AVX-512 (where BENCHMARKS.md measured it fastest), else our kernel
    /// where the CPU has AVX2+FMA or AVX-512, else OpenBLAS; never bf16, which rounds W_hh and the
    /// activations to 8 significant bits and so is only taken when named. bf16 is allowed in
    /// reproducible mode: its summation order is fixed (crecurrent.h), its bits depend only on the
    /// inputs, just not the fp32 paths' bits.
    public static func path(for value: String?) throws -> Path {
        switch value ?? "" {
        case "", "auto":
            let best = Level.best
            if best == .avx512 && libxsmm.loaded { return .packed(.libxsmm) }
            return best == .scalar ? .openblas : .packed(best)
        case "openblas":
            return .openblas
        case "packed":
            return .packed(Level.best)
        case "libxsmm":
            guard libxsmm.loaded else {
                throw ChoiceError(description: "\(variable)=libxsmm: libxsmm did not load (\(libxsmm.info)); set RNN_DP_LIBXSMM to a libxsmm.so, or use auto, openblas or packed")
            }
            return .packed(.libxsmm)
        case "bf16":
            guard Level.avx512bf16.isSupported else {
                throw ChoiceError(description: "\(variable)=bf16: this CPU (or the compiler of crecurrent.c) has no AVX512_BF16 (vdpbf16ps); use auto, openblas or packed")
            }
            return .packed(.avx512bf16)
        default:
            throw ChoiceError(description: "\(variable)=\(value!): unknown value (use auto, openblas, packed, libxsmm or bf16)")
        }
    }

    /// The path of this process, read from the environment once.
    public static let selected: Result<Path, ChoiceError> = {
        let value = getenv(variable).map { String(cString: $0) }
        do { return .success(try path(for: value)) } catch let e as ChoiceError { return .failure(e) } catch { fatalError("\(error)") }
    }()

    /// The path, or the reason RNN_DP_PRODUCTS names none (the commands check it at start).
    public static func checked() throws -> Path { try selected.get() }

    /// Tests only: a path other than the process's for the closure of
    /// `RecurrentProducts.$override.withValue(.packed(.avx512bf16)) { ... }` (nil: RNN_DP_PRODUCTS).
    @TaskLocal public static var override: Path?

    /// The path; the commands have checked RNN_DP_PRODUCTS before any forward pass.
    public static var current: Path {
        if let p = override { return p }
        switch selected {
        case .success(let p): return p
        case .failure(let e): preconditionFailure(e.description)
        }
    }

    /// A short name for records: openblas, packed-avx512, packed-avx2, packed-scalar, libxsmm or bf16.
    public static func name(_ p: Path) -> String {
        switch p {
        case .openblas: return "openblas"
        case .packed(.libxsmm): return "libxsmm"
        case .packed(.avx512bf16): return "bf16"
        case .packed(let level): return "packed-\(level == .avx2 ? "avx2" : level == .avx512 ? "avx512" : "scalar")"
        }
    }

    /// One line for the start of `rnn-dp train` and `rnn-dp bench`.
    public static func summary(_ p: Path) -> String {
        switch p {
        case .openblas: return "products: openblas (cblas_sgemm per step)"
        case .packed(.libxsmm): return "products: libxsmm (JIT target \(libxsmm.info)), W_hh packed once per forward pass"
        case .packed(.avx512bf16):
            return "products: bf16 (AVX512_BF16 vdpbf16ps: W_hh and h/dz rounded to bf16, fp32 accumulation; fp32 master weights, dW and other products), W_hh packed once per forward pass"
        case .packed(let level): return "products: packed (\(level.name)), W_hh packed once per forward pass"
        }
    }
}

/// One layer's W_hh (G*H, H) packed for both per-step products (crecurrent.h). Every output element
/// is its old value plus one fma per k, k ascending, so the bits depend only on the inputs (not on
/// B, the tiles or the level). Not for concurrent use.
public final class PackedRecurrentWeights {
    private let handle: OpaquePointer
    public let gatesTimesHidden: Int  // G*H
    public let hidden: Int  // H
    public let level: RecurrentProducts.Level

    public init(gatesTimesHidden: Int, hidden: Int, level: RecurrentProducts.Level) {
        precondition(level.isSupported, "the CPU does not run the \(level.name) kernel")
        guard let h = crec_create(Int32(gatesTimesHidden), Int32(hidden), level.rawValue) else { fatalError("out of memory packing W_hh") }
        handle = h
        self.gatesTimesHidden = gatesTimesHidden
        self.hidden = hidden
        self.level = level
    }
    deinit { crec_free(handle) }

    /// Packs W (G*H, H) row-major; call again after W changes.
    public func pack(_ w: UnsafePointer<Float>) { crec_pack(handle, w) }
    /// out (rows, G*H) += hPrev (rows, H) W^T.
    public func forward(_ hPrev: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>) {
        crec_forward(handle, hPrev, Int32(rows), out)
    }
    /// out (rows, H) += dz (rows, G*H) W, or with accumulate false out = dz W (the same bits as
    /// into zeros, without reading out).
    public func backward(_ dz: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool = true) {
        if accumulate { crec_backward(handle, dz, Int32(rows), out) } else { crec_backward_set(handle, dz, Int32(rows), out) }
    }
}
