from paperdefs import State, TrainRecipe, eval_fn

import dagger as dg


def test_s3_roundtrip(s3_location):
    url, opts = s3_location
    exp = dg.Experiment(url, state_class=State, storage_options=opts)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=5, lr=0.1)(root)
    eval_fn(s)
    rep = exp.run()
    assert len(rep.computed) == 2
    exp2 = dg.Experiment.restore(url, storage_options=opts)
    assert len(exp2.graph) == 2
    st = exp2.graph.node(s.sha()).restore()
    assert st.model["w"].shape == (6,)
