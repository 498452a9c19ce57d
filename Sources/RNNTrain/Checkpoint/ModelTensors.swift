import Foundation
import RNN

// The tensors of rnn-dp's files (the format: Checkpoint.swift), written from and read into the
// network's flat buffers by PyTorch name.

/// The parameters under their names, then batch norm's running statistics.
func modelTensors(_ net: Network<Float>) -> [SafeTensors.Tensor] {
    let p = net.parameters
    return (net.layout.views + net.layout.aliases).map { v in SafeTensors.Tensor(name: v.name, shape: v.shape, values: Array(p.buffer[v.range])) }
        + runningStatisticsTensors(net)
}

/// Batch norm's running statistics as tensors rnn.bn_running_mean_l{k} and rnn.bn_running_var_l{k}
/// (buffers, like PyTorch's BatchNorm running_mean / running_var; not trained parameters).
public func runningStatisticsTensors(_ net: Network<Float>) -> [SafeTensors.Tensor] {
    guard net.spec.batchNorm else { return [] }
    let gh = net.spec.cell.gates * net.spec.hiddenSize
    let r = net.runningStatistics.array
    var out: [SafeTensors.Tensor] = []
    for k in 0..<net.spec.units {
        let suffix = "l\(k / net.spec.directions)" + (k % net.spec.directions == 1 ? "_reverse" : "")
        let mean = Array(r[(2 * k * gh)..<((2 * k + 1) * gh)])
        let variance = Array(r[((2 * k + 1) * gh)..<((2 * k + 2) * gh)])
        out.append(SafeTensors.Tensor(name: "rnn.bn_running_mean_\(suffix)", shape: [gh], values: mean))
        out.append(SafeTensors.Tensor(name: "rnn.bn_running_var_\(suffix)", shape: [gh], values: variance))
    }
    return out
}

/// The optimizer's state as "optimizer.<state>.<parameter>" tensors.
func optimizerTensors(_ state: [(name: String, buffer: Buffer<Float>)], layout: ParameterLayout) -> [SafeTensors.Tensor] {
    state.flatMap { (state, buffer) in
        layout.views.map { v in SafeTensors.Tensor(name: "optimizer.\(state).\(v.name)", shape: v.shape, values: Array(buffer.buffer[v.range])) }
    }
}

/// Copies tensor `name` into `buffer` at `offset`, requiring it with exactly `shape`. Errors
/// start with `prefix` (the option and the file).
func copyTensor(_ file: SafeTensors.File, _ name: String, shape: [Int], into buffer: Buffer<Float>, at offset: Int, prefix: String) throws {
    guard let t = file.tensor(name) else { throw RNNDPError("\(prefix): no tensor '\(name)' (expected shape \(shape))") }
    guard t.shape == shape else { throw RNNDPError("\(prefix): tensor '\(name)' has shape \(t.shape), this model needs \(shape)") }
    for (i, x) in t.values.enumerated() { buffer[offset + i] = x }
}

/// Reads every parameter and, when `requireStatistics` or present, batch norm's running
/// statistics; returns the names read.
@discardableResult
func restoreModelTensors(_ file: SafeTensors.File, into net: Network<Float>, prefix: String, requireStatistics: Bool = true) throws -> [String] {
    var names: [String] = []
    for v in net.layout.views {
        try copyTensor(file, v.name, shape: v.shape, into: net.parameters, at: v.offset, prefix: prefix)
        names.append(v.name)
    }
    // Tied weights: the file's head.weight must be the embedding it ties (PyTorch stores both).
    for a in net.layout.aliases {
        guard let t = file.tensor(a.name) else { continue }
        guard t.shape == a.shape, t.values.elementsEqual(net.parameters.buffer[a.range]) else {
            throw RNNDPError("\(prefix): tensor '\(a.name)' \(t.shape) differs from the tensor it is tied to in this model (model.tie_weights)")
        }
        names.append(a.name)
    }
    for (i, r) in runningStatisticsTensors(net).enumerated() where requireStatistics || file.tensor(r.name) != nil {
        try copyTensor(file, r.name, shape: r.shape, into: net.runningStatistics, at: i * r.values.count, prefix: prefix)
        names.append(r.name)
    }
    return names
}

/// Reads the optimizer's state; returns the names read.
func restoreOptimizerTensors(_ file: SafeTensors.File, into optimizerState: [(name: String, buffer: Buffer<Float>)], layout: ParameterLayout, prefix: String) throws -> [String] {
    var names: [String] = []
    for (state, buffer) in optimizerState {
        for v in layout.views {
            try copyTensor(file, "optimizer.\(state).\(v.name)", shape: v.shape, into: buffer, at: v.offset, prefix: prefix)
            names.append("optimizer.\(state).\(v.name)")
        }
    }
    return names
}

/// model.init_from: copies the tensors of a safetensors file into the parameters by PyTorch name,
/// requiring every tensor of the layout, no other (optimizer state and metadata are ignored), and
/// equal shapes; batch norm's running statistics are loaded when present. A file rnn-dp wrote (it
/// has rnn-dp's `format` in its metadata) is verified as `--resume`, `eval` and `sample` verify
/// one (format and checksum, `Checkpoint.verify`); a file from elsewhere (PyTorch's `save_file`)
/// carries no checksum and is checked for structure only.
public func loadParameters(from path: String, into net: Network<Float>) throws {
    let file: SafeTensors.File
    do {
        let bytes: [UInt8]
        (file, bytes) = try SafeTensors.readWithBytes(path: path)
        if file.metadata["format"] != nil || file.metadata["checksum"] != nil { try Checkpoint.verify(file, bytes: bytes, name: path) }
    } catch let e as SafeTensors.FormatError {
        throw RNNDPError("model.init_from: \(e.message)")
    } catch let e as Checkpoint.Error {
        throw RNNDPError("model.init_from: \(e.message)")
    }
    try loadParameters(from: file, path: path, into: net, context: "model.init_from")
}

/// - context: the option the file came from, leading the error messages ("model.init_from"), or
///   nil for a file named on its own.
public func loadParameters(from file: SafeTensors.File, path: String, into net: Network<Float>, context: String? = "model.init_from") throws {
    let prefix = context.map { "\($0): \(path)" } ?? path
    let running = Set(runningStatisticsTensors(net).map(\.name))
    let model = file.tensors.filter { t in !t.name.hasPrefix("optimizer.") && !running.contains(t.name) }
    let names = Set((net.layout.views + net.layout.aliases).map(\.name))
    if let extra = model.first(where: { !names.contains($0.name) }) {
        throw RNNDPError("\(prefix): tensor '\(SafeTensors.printable(extra.name))' \(extra.shape) is not a parameter of this model (\(net.layout.views.map(\.name).joined(separator: ", ")))")
    }
    try restoreModelTensors(file, into: net, prefix: prefix, requireStatistics: false)
}
