import Foundation
import RNN
import RNNData
import RNNDistributed

/// Builds the dataset a config describes.
/// - vocabulary, normalization: a trained model's own (evaluating it), instead of the data's.
public func makeDataset(_ config: TrainConfig, vocabulary: Vocabulary? = nil,
                        normalization: (mean: Double, std: Double)? = nil) throws -> Dataset {
    let d = config.data
    let t = config.training
    do {
        switch d.kind {
        case .text:
            return try TextDataset(path: d.path!, validationFraction: d.validationFraction, steps: t.sequenceLength,
                                   output: config.model.output ?? .everyStep, seed: config.seed, maxValidation: t.evalSamples,
                                   vocabulary: vocabulary)
        case .csv:
            return try SeriesDataset(path: d.path!, column: d.column, validationFraction: d.validationFraction,
                                     interpolateMissing: d.interpolateMissing, steps: t.sequenceLength,
                                     output: config.model.output ?? .lastStep, seed: config.seed, maxValidation: t.evalSamples,
                                     normalization: normalization)
        case .npy:
            return try ArrayDataset.fromNumpy(inputs: d.inputs!, targets: d.targets!, validationInputs: d.validationInputs,
                                              validationTargets: d.validationTargets, validationFraction: d.validationFraction,
                                              shuffle: d.shuffle, seed: config.seed, maxValidation: t.evalSamples,
                                              vocabulary: d.vocabulary, classes: d.classes, lengths: d.lengths,
                                              validationLengths: d.validationLengths, bucketing: d.bucketing)
        case .ts:
            return try ArrayDataset.fromTS(path: d.path!, validationPath: d.validationPath, shuffle: d.shuffle,
                                           seed: config.seed, maxValidation: t.evalSamples, bucketing: d.bucketing)
        case .synthetic:  // data.task: adding, the only task
            return try AddingProblem(length: t.sequenceLength, seed: config.seed, validationSamples: t.evalSamples)
        }
    } catch let e as DataError {
        throw RNNDPError("data: \(e.message)")
    }
}

/// The model a config and its dataset describe. For npy data the loss and the output mode follow
/// from the arrays' types and shapes; a config that says otherwise is an error.
public func makeModelSpec(_ config: TrainConfig, dataset: Dataset) throws -> ModelSpec {
    var loss = config.training.loss, output = config.model.output
    if let a = dataset as? ArrayDataset {
        func conflict(_ key: String, _ given: String, _ data: String) -> RNNDPError {
            RNNDPError("\(config.source): \(key): \(given) does not match the data, whose targets call for \(data)", collective: true)
        }
        if let l = loss, l != a.loss { throw conflict("training.loss", l.rawValue, a.loss.rawValue) }
        if let o = output, o != a.output { throw conflict("model.output", o.rawValue, a.output.rawValue) }
        loss = a.loss
        output = a.output
    }
    if config.model.inputDropout > 0, case .tokens = dataset.input, config.model.embeddingSize == nil {
        throw RNNDPError("\(config.source): model.input_dropout: applies to dense input or an embedding's output; this data is one-hot token input", collective: true)
    }
    if config.model.tieWeights, case .tokens(let V) = dataset.input, dataset.outputSize != V || (output ?? .everyStep) != .everyStep {
        throw RNNDPError("\(config.source): model.tie_weights: needs a head over the \(V) input tokens at every step; this data has \(dataset.outputSize) outputs", collective: true)
    }
    if config.model.embeddingSize != nil, case .dense = dataset.input {
        throw RNNDPError("\(config.source): model.embedding_size: needs token input (text, or npy with data.vocabulary); this data is dense", collective: true)
    }
    return makeModelSpec(config, input: dataset.input, outputSize: dataset.outputSize, output: output!, loss: loss!)
}

/// The model's shape from the config, given what the data (or a model file) decides.
func makeModelSpec(_ config: TrainConfig, input: InputKind, outputSize: Int, output: OutputMode, loss: LossKind) -> ModelSpec {
    var spec = ModelSpec(cell: config.model.cell, activation: config.model.activation, input: input,
                         hiddenSize: config.model.hiddenSize, layers: config.model.layers, outputSize: outputSize,
                         output: output, loss: loss, averageOverTime: config.training.averageOverTime)
    spec.leakySlope = config.model.leakySlope
    spec.learnedInitialState = config.model.learnedInitialState
    spec.layerNorm = config.model.layerNorm
    spec.batchNorm = config.model.batchNorm
    spec.bidirectional = config.model.bidirectional
    spec.embeddingSize = config.model.embeddingSize
    spec.tieWeights = config.model.tieWeights
    spec.dropout = config.model.dropout
    spec.inputDropout = config.model.inputDropout
    spec.headDropout = config.model.headDropout
    spec.variationalDropout = config.model.variationalDropout
    return spec
}

